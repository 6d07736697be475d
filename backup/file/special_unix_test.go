//go:build unix

package file

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// Someone who can write to the location's directory leaves a FIFO where
// an object goes: reading it fails at once (it is no object), never
// blocks; a directory there is no object either. A Put replaces the FIFO.
func TestGet_AFIFOOrADirectoryIsNoObject(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "locks"), 0o755)
	if err := syscall.Mkfifo(filepath.Join(dir, "locks", "prune.json"), 0o644); err != nil {
		t.Skip(err)
	}
	os.MkdirAll(filepath.Join(dir, "locks", "dir.json", "x"), 0o755)
	done := make(chan error, 1)
	go func() { _, _, err := s.GetVersion(ctx, "locks/prune.json", 1<<16); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, backup.ErrCorrupt) {
			t.Fatalf("reading a FIFO: %v, want ErrCorrupt", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reading a FIFO blocks")
	}
	if _, err := s.Get(ctx, "locks/dir.json"); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("reading a directory: %v, want ErrNotFound", err)
	}
	if err := s.Put(ctx, "locks/prune.json", []byte("{}")); err != nil {
		t.Fatalf("a put over the FIFO: %v", err)
	}
	if b, _, err := s.GetVersion(ctx, "locks/prune.json", 1<<16); err != nil || string(b) != "{}" {
		t.Fatalf("after the put: %q, %v", b, err)
	}
}
