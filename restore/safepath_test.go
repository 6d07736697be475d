package restore

import (
	"io/fs"
	"os"
	"strings"
	"testing"
)

// A made-up file system for safePathOf: path -> mode and owner.
type fakeFS map[string]pathEntry

func (f fakeFS) lstat(p string) (pathEntry, error) {
	e, ok := f[p]
	if !ok {
		return pathEntry{}, &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
	}
	return e, nil
}

func dirOf(perm os.FileMode, uid int) pathEntry { return pathEntry{mode: os.ModeDir | perm, uid: uid} }

func TestSafePathOf(t *testing.T) {
	const me, other = 1000, 23456
	sticky := os.ModeSticky
	for _, c := range []struct {
		name  string
		euid  int
		fs    fakeFS
		path  string
		wrong string // "" if safe; else in the error
	}{
		{"root's own directory", 0, fakeFS{"/": dirOf(0o755, 0), "/var": dirOf(0o755, 0), "/var/lib": dirOf(0o755, 0), "/var/lib/fk": dirOf(0o700, 0)}, "/var/lib/fk", ""},
		{"a user's home directory", me, fakeFS{"/": dirOf(0o755, 0), "/home": dirOf(0o755, 0), "/home/me": dirOf(0o750, me), "/home/me/fk": dirOf(0o700, me)}, "/home/me/fk", ""},
		{"root into the service user's directory", 0, fakeFS{"/": dirOf(0o755, 0), "/srv": dirOf(0o755, 0), "/srv/fk": dirOf(0o755, other), "/srv/fk/.w": dirOf(0o700, 0)}, "/srv/fk/.w", "/srv/fk belongs to uid 23456"},
		{"a user into root's directory", me, fakeFS{"/": dirOf(0o755, 0), "/srv": dirOf(0o755, 0), "/srv/.w": dirOf(0o700, me)}, "/srv/.w", ""},
		{"a directory above belongs to another user", 0, fakeFS{"/": dirOf(0o755, 0), "/home": dirOf(0o755, 0), "/home/svc": dirOf(0o755, other), "/home/svc/fk": dirOf(0o700, 0), "/home/svc/fk/.w": dirOf(0o700, 0)}, "/home/svc/fk/.w", "/home/svc belongs to uid 23456"},
		{"world-writable", 0, fakeFS{"/": dirOf(0o755, 0), "/data": dirOf(0o777, 0), "/data/.w": dirOf(0o700, 0)}, "/data/.w", "/data can be written by every user"},
		{"group-writable", 0, fakeFS{"/": dirOf(0o755, 0), "/data": dirOf(0o775, 0), "/data/.w": dirOf(0o700, 0)}, "/data/.w", "/data can be written by its group"},
		{"sticky /tmp, our entry", 0, fakeFS{"/": dirOf(0o755, 0), "/tmp": dirOf(0o777|sticky, 0), "/tmp/flowkeep-restore-1-a": dirOf(0o700, 0)}, "/tmp/flowkeep-restore-1-a", ""},
		{"sticky /tmp, a user's entry", me, fakeFS{"/": dirOf(0o755, 0), "/tmp": dirOf(0o777|sticky, 0), "/tmp/s": dirOf(0o700, me)}, "/tmp/s", ""},
		{"sticky /tmp, another user's entry", 0, fakeFS{"/": dirOf(0o755, 0), "/tmp": dirOf(0o777|sticky, 0), "/tmp/at": dirOf(0o755, other), "/tmp/at/.w": dirOf(0o700, 0)}, "/tmp/at/.w", "/tmp/at belongs to uid 23456"},
		{"root's directory in sticky /tmp, a user's entry in it", 0, fakeFS{"/": dirOf(0o755, 0), "/tmp": dirOf(0o777|sticky, 0), "/tmp/d": dirOf(0o755, me), "/tmp/d/s": dirOf(0o700, 0)}, "/tmp/d/s", "/tmp/d belongs to uid 1000"},
		{"sticky, the path ends there", 0, fakeFS{"/": dirOf(0o755, 0), "/tmp": dirOf(0o777|sticky, 0)}, "/tmp", "/tmp can be written by every user"},
		{"sticky but another user's directory", me, fakeFS{"/": dirOf(0o755, 0), "/shared": dirOf(0o777|sticky, other), "/shared/s": dirOf(0o700, me)}, "/shared/s", "/shared belongs to uid 23456"},
		{"the leaf belongs to another user", 0, fakeFS{"/": dirOf(0o755, 0), "/w": dirOf(0o700, other)}, "/w", "/w belongs to uid 23456"},
		{"a symlink on the way", 0, fakeFS{"/": dirOf(0o755, 0), "/l": {mode: os.ModeSymlink | 0o777, uid: 0}, "/l/w": dirOf(0o700, 0)}, "/l/w", "/l is a symlink"},
		{"a file on the way", 0, fakeFS{"/": dirOf(0o755, 0), "/f": {mode: 0o644, uid: 0}}, "/f", "/f is not a directory"},
		{"missing", 0, fakeFS{"/": dirOf(0o755, 0)}, "/gone", "does not exist"},
		{"an unknown owner", 0, fakeFS{"/": dirOf(0o755, 0), "/u": {mode: os.ModeDir | 0o700, uid: -1}}, "/u", "/u belongs to uid -1"},
		{"a relative path", 0, fakeFS{}, "rel/w", "not an absolute path"},
		{"/ itself", 0, fakeFS{"/": dirOf(0o755, 0)}, "/", ""},
		{"/ writable by others", 0, fakeFS{"/": dirOf(0o777, 0), "/w": dirOf(0o700, 0)}, "/w", "/ can be written by every user"},
		{"uncleaned path", 0, fakeFS{"/": dirOf(0o755, 0), "/a": dirOf(0o755, 0), "/a/w": dirOf(0o700, 0)}, "/a/./b/../w/", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := safePathOf(c.path, c.euid, c.fs.lstat)
			switch {
			case c.wrong == "" && err != nil:
				t.Fatalf("safePathOf(%s) = %v, want safe", c.path, err)
			case c.wrong != "" && (err == nil || !strings.Contains(err.Error(), c.wrong)):
				t.Fatalf("safePathOf(%s) = %v, want an error saying %q", c.path, err, c.wrong)
			}
		})
	}
}
