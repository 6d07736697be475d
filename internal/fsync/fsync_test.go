package fsync

import (
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
