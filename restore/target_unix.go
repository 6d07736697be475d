//go:build unix

package restore

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
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

// walkDir opens dir (made absolute) one name at a time from /, never
// following a symlink that a user other than this one or root could have
// placed: a symlink is followed only where its directory is safe from
// other users (safeToFollow), else walkDir fails with ErrUnsafeTarget. With
// create, missing directories are made (mode 0755) on the way. It returns
// the open directory and the path it was reached by, free of symlinks.
func walkDir(dir string, create bool) (*os.File, string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, "", err
	}
	fd, err := unix.Open("/", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", &os.PathError{Op: "open", Path: "/", Err: err}
	}
	at := "/"
	todo := splitPath(abs)
	links := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == ".." {
			next, err := unix.Openat(fd, "..", unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
			unix.Close(fd)
			if err != nil {
				return nil, "", &os.PathError{Op: "open", Path: filepath.Dir(at), Err: err}
			}
			fd, at = next, filepath.Dir(at)
			continue
		}
		next, err := unix.Openat(fd, name, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.ENOENT && create {
			if merr := unix.Mkdirat(fd, name, 0o755); merr != nil && merr != unix.EEXIST {
				unix.Close(fd)
				return nil, "", &os.PathError{Op: "mkdir", Path: filepath.Join(at, name), Err: merr}
			} else if merr == nil {
				// The new name is durable once its directory is synced.
				if serr := unix.Fsync(fd); serr != nil {
					unix.Close(fd)
					return nil, "", &os.PathError{Op: "fsync", Path: at, Err: serr}
				}
			}
			next, err = unix.Openat(fd, name, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		}
		if err == unix.ELOOP || err == unix.ENOTDIR {
			var st unix.Stat_t
			if serr := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				if uerr := safeToFollow(fd, at, name, int(st.Uid)); uerr != nil {
					unix.Close(fd)
					return nil, "", uerr
				}
				if links++; links > 40 {
					unix.Close(fd)
					return nil, "", &os.PathError{Op: "open", Path: abs, Err: unix.ELOOP}
				}
				buf := make([]byte, 4096)
				n, rerr := unix.Readlinkat(fd, name, buf)
				if rerr != nil {
					unix.Close(fd)
					return nil, "", &os.PathError{Op: "readlink", Path: filepath.Join(at, name), Err: rerr}
				}
				target := string(buf[:n])
				todo = append(splitPath(target), todo...)
				if filepath.IsAbs(target) {
					unix.Close(fd)
					if fd, err = unix.Open("/", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
						return nil, "", &os.PathError{Op: "open", Path: "/", Err: err}
					}
					at = "/"
				}
				continue
			}
		}
		if err != nil {
			unix.Close(fd)
			return nil, "", &os.PathError{Op: "open", Path: filepath.Join(at, name), Err: err}
		}
		unix.Close(fd)
		fd, at = next, filepath.Join(at, name)
	}
	return os.NewFile(uintptr(fd), at), at, nil
}

func splitPath(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		if s != "" && s != "." {
			out = append(out, s)
		}
	}
	return out
}

// safeToFollow says whether the symlink name (owned by uid) in the open
// directory fd (reached as at) can only have been placed by this user or
// root: the directory is theirs and no one else may write in it, or it is
// sticky (as /tmp) and the symlink is theirs.
func safeToFollow(fd int, at, name string, uid int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "stat", Path: at, Err: err}
	}
	euid := os.Geteuid()
	trusted := func(u int) bool { return u == euid || u == 0 }
	perm := st.Mode & 0o777
	switch {
	case !trusted(int(st.Uid)):
		return fmt.Errorf("%w: %s is a symlink in %s, which belongs to uid %d: that user decides where it leads. Give the directory it leads to instead, once you have checked it", ErrUnsafeTarget, filepath.Join(at, name), at, st.Uid)
	case perm&0o022 != 0 && (st.Mode&unix.S_ISVTX == 0 || !trusted(uid)):
		return fmt.Errorf("%w: %s is a symlink in %s, which other users can write: they decide where it leads. Give the directory it leads to instead, once you have checked it", ErrUnsafeTarget, filepath.Join(at, name), at)
	}
	return nil
}

// ProbeWritable says whether this process can make entries in dir, which
// must exist: it opens dir as a restore would (walkDir: never through a
// symlink another user could have placed, ErrUnsafeTarget) and makes and
// removes a directory in it through that descriptor. Permissions are not
// all that can refuse (a read-only or virtual file system), so it tries.
func ProbeWritable(dir string) error {
	d, _, err := walkDir(dir, false)
	if err != nil {
		return err
	}
	defer d.Close()
	var b [8]byte
	rand.Read(b[:])
	name := ".flowkeep-probe-" + hex.EncodeToString(b[:])
	if err := unix.Mkdirat(int(d.Fd()), name, 0o700); err != nil {
		return err
	}
	return unix.Unlinkat(int(d.Fd()), name, unix.AT_REMOVEDIR)
}
