package directio

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestBufferIsAligned(t *testing.T) {
	for _, n := range []int{Align, 3 * Align, 4 << 20, 4<<20 + 1} {
		b := Buffer(n)
		if len(b) != 0 || cap(b) != n {
			t.Fatalf("Buffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		if n%Align == 0 && !Aligned(b[:n]) {
			t.Fatalf("Buffer(%d) is not aligned", n)
		}
	}
	if Aligned(Buffer(2 * Align)[1 : Align+1]) {
		t.Fatal("an offset slice counts as aligned")
	}
	if Aligned(Buffer(2 * Align)[:100]) {
		t.Fatal("a short slice counts as aligned")
	}
}

// Whatever the pieces, the file holds exactly what was written, on disk
// (direct I/O) and on tmpfs (which may refuse it).
func TestWriterWritesExactly(t *testing.T) {
	dirs := map[string]string{"disk": t.TempDir()}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "directio")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			dirs["tmpfs"] = d
		}
	}
	r := rand.New(rand.NewSource(1))
	cases := []struct {
		name   string
		pieces []int  // sizes
		offset []bool // piece not at an aligned address
	}{
		{"aligned chunks", []int{1 << 20, 1 << 20, 4 * Align}, nil},
		{"short tail", []int{1 << 20, 1 << 20, 1000}, nil},
		{"short first", []int{1000, 1 << 20}, nil},
		{"misaligned address", []int{Align, Align, Align}, []bool{false, true, false}},
		{"empty", nil, nil},
	}
	for fs, dir := range dirs {
		for _, c := range cases {
			t.Run(fs+"/"+c.name, func(t *testing.T) {
				path := filepath.Join(dir, c.name)
				w, err := Create(path)
				if err != nil {
					t.Fatal(err)
				}
				var want []byte
				for i, n := range c.pieces {
					b := Buffer(n + 1)
					if i < len(c.offset) && c.offset[i] {
						b = b[1:1]
					}
					b = b[:n]
					r.Read(b)
					want = append(want, b...)
					if m, err := w.Write(b); err != nil || m != n {
						t.Fatalf("write %d bytes: %d, %v", n, m, err)
					}
				}
				aligned := true
				for _, n := range c.pieces {
					aligned = aligned && n%Align == 0
				}
				if fs == "disk" && onExt4(dir) && aligned && len(c.offset) == 0 && !w.Direct() {
					t.Error("aligned writes on ext4 went through the page cache")
				}
				if w.Direct() && !aligned {
					t.Error("still direct after an unaligned write")
				}
				if err := w.Sync(); err != nil {
					t.Fatal(err)
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("file holds %d bytes, wrote %d (or they differ)", len(got), len(want))
				}
			})
		}
	}
}

func TestCreateRefusesExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(path); err == nil {
		t.Fatal("Create overwrote an existing file")
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatalf("existing file changed to %q", b)
	}
}

// A symlink at the name is refused, not followed: what it points to stays
// as it was.
func TestCreateInNeverFollowsASymlink(t *testing.T) {
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(victim, filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if w, err := CreateIn(root, "f"); err == nil {
		w.Close()
		t.Fatal("CreateIn opened a symlink")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("the symlink's target changed to %q", b)
	}
}

// Pieces written at their offsets in any order, from several goroutines,
// aligned ones and a short unaligned last one, make exactly the file.
func TestWriteAtOutOfOrder(t *testing.T) {
	const piece = 4 * Align
	want := make([]byte, 9*piece+1234)
	for i := range want {
		want[i] = byte(i*7 + i/piece)
	}
	path := filepath.Join(t.TempDir(), "f")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Truncate(int64(len(want))); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 9; i >= 0; i-- { // the short last piece first
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			end := min((i+1)*piece, len(want))
			b := Buffer(piece)[:end-i*piece]
			copy(b, want[i*piece:end])
			if _, err := w.WriteAt(b, int64(i*piece)); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, want) {
		t.Fatalf("file differs from what was written (%d bytes, want %d)", len(got), len(want))
	}
}
