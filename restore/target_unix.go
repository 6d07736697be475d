//go:build unix

package restore

import (
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// renameDirs renames from in fromDir to to in toDir (renameat: neither
// name is followed if it is a symlink).
func renameDirs(fromDir *os.File, from string, toDir *os.File, to string) error {
	if err := unix.Renameat(int(fromDir.Fd()), from, int(toDir.Fd()), to); err != nil {
		return &os.LinkError{Op: "rename", Old: filepath.Join(fromDir.Name(), from), New: filepath.Join(toDir.Name(), to), Err: err}
	}
	return nil
}

// ownedByUs reports whether this process's user owns the file.
func ownedByUs(fi os.FileInfo) bool {
	s, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(s.Uid) == os.Geteuid()
}

// safePath is safePathOf for this process's user, on the real file
// system.
func safePath(path string) error {
	return safePathOf(path, os.Geteuid(), func(p string) (pathEntry, error) {
		st, err := os.Lstat(p)
		if err != nil {
			return pathEntry{}, err
		}
		e := pathEntry{mode: st.Mode(), uid: -1}
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			e.uid = int(s.Uid)
		}
		return e, nil
	})
}
