package restore

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A restore's images are synced while they are written, every flushEvery
// bytes (so the fsync before each file's rename finds little left to
// write), and a flush that fails fails that image's fetch: a later fsync
// need not report what an earlier one did.
func TestFlusher_SyncsImagesWhileTheyAreWritten(t *testing.T) {
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, b, c := open("a"), open("b"), open("c")
	var mu sync.Mutex
	synced := map[*os.File]int{}
	broken := errors.New("EIO")
	syncFile = func(f *os.File) error {
		mu.Lock()
		defer mu.Unlock()
		synced[f]++
		if f == b {
			return broken
		}
		return nil
	}
	t.Cleanup(func() { syncFile = (*os.File).Sync })
	count := func(f *os.File) int {
		mu.Lock()
		defer mu.Unlock()
		return synced[f]
	}

	fl := newFlusher()
	wa, wb := fl.track(a, a), fl.track(b, b)
	buf := make([]byte, 1<<20)
	write := func(w interface {
		WriteAt([]byte, int64) (int, error)
	}, n int) {
		for i := 0; i < n; i++ {
			if _, err := w.WriteAt(buf, int64(i)*int64(len(buf))); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(wa, flushEvery>>20-1)
	time.Sleep(50 * time.Millisecond)
	if count(a) != 0 {
		t.Fatalf("synced after %d MiB, before flushEvery (%d MiB)", flushEvery>>20-1, flushEvery>>20)
	}
	write(wb, 1) // the two images together reach flushEvery
	waitFor(t, func() bool { return count(a) == 1 && count(b) == 1 })
	if err := fl.untrack(a); err != nil {
		t.Errorf("image a: %v, its flush succeeded", err)
	}
	if err := fl.untrack(b); !errors.Is(err, broken) {
		t.Errorf("image b: %v, want its failed flush", err)
	}
	// An image no longer tracked is not synced, and a third one is.
	wc := fl.track(c, c)
	write(wc, flushEvery>>20)
	waitFor(t, func() bool { return count(c) == 1 })
	if count(a) != 1 || count(b) != 1 {
		t.Errorf("images done with were synced again: a %d, b %d times", count(a), count(b))
	}
	if err := fl.untrack(c); err != nil {
		t.Error(err)
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
