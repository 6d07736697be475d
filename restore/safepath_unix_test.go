//go:build unix

package restore

import (
	"os"
	"path/filepath"
	"testing"
)

// safePath on real directories.
func TestSafePath_RealDirectories(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make directories of another user's")
	}
	base := t.TempDir() // root's, 0700, in /tmp
	mk := func(name string, perm os.FileMode, uid int) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	own := mk("own", 0o755, 0)
	svc := mk("svc", 0o755, serviceUID)
	shared := mk("shared", 0o777, 0)
	tmp := mk("tmp", 0o777|os.ModeSticky, 0)
	for _, d := range []string{own, svc, shared, tmp} {
		if err := os.Mkdir(filepath.Join(d, "w"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink(own, filepath.Join(base, "link"))
	for _, c := range []struct {
		path string
		safe bool
	}{
		{base, true},
		{filepath.Join(own, "w"), true},
		{filepath.Join(svc, "w"), false},
		{filepath.Join(shared, "w"), false},
		{filepath.Join(tmp, "w"), true},
		{filepath.Join(base, "link", "w"), false},
	} {
		err := safePath(c.path)
		if (err == nil) != c.safe {
			t.Errorf("safePath(%s) = %v, want safe %v", c.path, err, c.safe)
		}
	}
}
