//go:build unix

package restore

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
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

// fdPath is a name that leads to the open file f itself, for a stat by
// name ("" where there is none).
func fdPath(f *os.File) string {
	fd := strconv.Itoa(int(f.Fd()))
	if runtime.GOOS == "linux" {
		return "/proc/self/fd/" + fd
	}
	return "/dev/fd/" + fd
}

// sameDevice reports whether two open files are on one file system.
func sameDevice(a, b *os.File) bool {
	sa, err := a.Stat()
	if err != nil {
		return false
	}
	sb, err := b.Stat()
	if err != nil {
		return false
	}
	x, ok1 := sa.Sys().(*syscall.Stat_t)
	y, ok2 := sb.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && x.Dev == y.Dev
}
