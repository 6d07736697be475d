package fsync

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestDir_ToleratesFileSystemsThatCannotSyncDirectories(t *testing.T) {
	defer func(f func(*os.File) error) { syncDir = f }(syncDir)
	for _, tc := range []struct {
		err  error
		fail bool
	}{
		{syscall.EINVAL, false},
		{syscall.ENOTSUP, false},
		{syscall.EIO, true},
	} {
		syncDir = func(*os.File) error { return &os.PathError{Op: "sync", Path: "d", Err: tc.err} }
		err := Dir(t.TempDir())
		if (err != nil) != tc.fail {
			t.Errorf("fsync answering %v: Dir returned %v", tc.err, err)
		}
	}
}

func TestMkdirAll_SyncsEveryParentItCreates(t *testing.T) {
	defer func(f func(*os.File) error) { syncDir = f }(syncDir)
	root := t.TempDir()
	var synced []string
	syncDir = func(d *os.File) error { synced = append(synced, d.Name()); return d.Sync() }
	target := filepath.Join(root, "a", "b", "c")
	if err := MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(target); err != nil || !st.IsDir() {
		t.Fatalf("%s not created: %v", target, err)
	}
	want := []string{root, filepath.Join(root, "a"), filepath.Join(root, "a", "b")}
	if len(synced) != len(want) {
		t.Fatalf("synced %v, want %v", synced, want)
	}
	for i := range want {
		if synced[i] != want[i] {
			t.Fatalf("synced %v, want %v", synced, want)
		}
	}
	synced = nil
	if err := MkdirAll(target, 0o755); err != nil || len(synced) != 0 {
		t.Fatalf("existing directory: err %v, synced %v", err, synced)
	}
}

// WriteFile replaces a file or, create-only, refuses one that exists and
// leaves it as it was; no temporary file is left either way.
func TestWriteFile_ReplaceOrCreateOnly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := WriteFile(path, []byte("one"), 0o600, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("two"), 0o600, false); !errors.Is(err, os.ErrExist) {
		t.Fatalf("create-only over an existing file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "one" {
		t.Fatalf("the refused write changed the file to %q", b)
	}
	if err := WriteFile(path, []byte("three"), 0o600, true); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if b, _ := os.ReadFile(path); string(b) != "three" || st.Mode().Perm() != 0o600 {
		t.Fatalf("replaced file: %q, mode %v", b, st.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d files in the directory, want 1", len(ents))
	}
}
