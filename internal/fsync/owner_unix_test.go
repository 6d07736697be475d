//go:build unix

package fsync

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// As root, WriteFileOwned leaves a file with the owner and mode asked for;
// a symlink at its name is replaced, never followed: what it points to
// keeps its content, mode and owner.
func TestWriteFileOwned_GivesTheFileAwayAndNeverFollowsASymlink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files away")
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chown(dir, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "key")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileOwned(path, []byte("key"), 0o640, true, 12345, 12346); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Sys().(*syscall.Stat_t); !st.Mode().IsRegular() || s.Uid != 12345 || s.Gid != 12346 || st.Mode().Perm() != 0o640 {
		t.Fatalf("%s: %v owned by %d:%d", path, st.Mode(), s.Uid, s.Gid)
	}
	vst, _ := os.Stat(victim)
	b, _ := os.ReadFile(victim)
	if s := vst.Sys().(*syscall.Stat_t); string(b) != "secret" || s.Uid != 0 || s.Gid != 0 || vst.Mode().Perm() != 0o600 {
		t.Fatalf("the symlink's target changed: %q, %v, %d:%d", b, vst.Mode(), s.Uid, s.Gid)
	}
}
