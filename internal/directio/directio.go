// Package directio writes large files past the page cache where the system
// allows it (O_DIRECT on Linux), and through it everywhere else.
//
// A restore lays down gigabytes that are read back once, if at all: going
// through the page cache makes every write pay for evicting earlier pages
// (under a memory cgroup, several times the cost of the copy) and leaves a
// long fsync at the end. Direct writes go to the device as they are made.
package directio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"unsafe"
)

// Align is the alignment direct writes need: of the buffer's address, its
// length and the file offset.
const Align = 4096

// Buffer returns a zero-length slice with capacity n whose array is
// aligned for direct writes.
func Buffer(n int) []byte {
	b := make([]byte, n+Align)
	off := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) & (Align - 1)); r != 0 {
		off = Align - r
	}
	return b[off : off : off+n]
}

// Aligned reports whether p can be written directly: its array starts on an
// Align boundary and its length is a multiple of Align.
func Aligned(p []byte) bool {
	return len(p)%Align == 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))&(Align-1) == 0
}

// Writer writes a new file sequentially. Aligned writes at an aligned
// offset bypass the page cache when the file was opened for direct I/O; the
// first write that is not aligned turns direct I/O off for the rest of the
// file (a file's last, short piece), so every write succeeds either way.
type Writer struct {
	f      *os.File
	direct bool
	dir    *os.Root // where f is, by name (WriteAt reopens it there)
	name   string
	ownDir bool // Create opened dir; Close closes it

	once sync.Once
	bf   *os.File // the same file without direct I/O (WriteAt's unaligned pieces)
	berr error
}

// Create creates path (which must not exist) for writing, with direct I/O
// if the file system supports it.
func Create(path string) (*Writer, error) {
	dir, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	w, err := CreateIn(dir, filepath.Base(path))
	if err != nil {
		dir.Close()
		return nil, err
	}
	w.ownDir = true
	return w, nil
}

// CreateIn is Create for name in dir: the file is created O_EXCL, and
// never through a symlink (os.Root opens with O_NOFOLLOW), so it is always
// a new file of this process's, whatever was at its name. dir must stay
// open until the Writer is closed.
func CreateIn(dir *os.Root, name string) (*Writer, error) {
	f, direct, err := create(dir, name)
	if err != nil {
		return nil, err
	}
	return &Writer{f: f, direct: direct, dir: dir, name: name}, nil
}

// Direct reports whether writes still bypass the page cache.
func (w *Writer) Direct() bool { return w.direct }

// Write writes p at the end of what was written so far.
func (w *Writer) Write(p []byte) (int, error) {
	if w.direct && !Aligned(p) {
		if err := w.buffered(); err != nil {
			return 0, err
		}
	}
	n, err := w.f.Write(p)
	if w.direct && n == 0 && errors.Is(err, syscall.EINVAL) {
		// The device wants a larger alignment than Align: go through the cache.
		if err := w.buffered(); err != nil {
			return 0, err
		}
		return w.f.Write(p)
	}
	return n, err
}

func (w *Writer) buffered() error {
	if err := setDirect(w.f, false); err != nil {
		return fmt.Errorf("turn off direct I/O on %s: %w", w.f.Name(), err)
	}
	w.direct = false
	return nil
}

// WriteAt writes p at off, and may be called from several goroutines at
// once (each writing its own range). Aligned pieces at aligned offsets go
// past the page cache; others (a file's short last piece) through it.
// Truncate the file to its final size first: writes within the file's
// size run side by side, extending ones one at a time.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	if w.direct && Aligned(p) && off%Align == 0 {
		n, err := w.f.WriteAt(p, off)
		if n != 0 || !errors.Is(err, syscall.EINVAL) {
			return n, err
		}
		// The device wants a larger alignment than Align.
	}
	w.once.Do(w.openBuffered)
	if w.berr != nil {
		return 0, w.berr
	}
	return w.bf.WriteAt(p, off)
}

// openBuffered opens the file a second time, without direct I/O (a flag of
// the open file, shared by duplicated descriptors), and makes sure it is
// the same file: its name could have been changed meanwhile.
func (w *Writer) openBuffered() {
	bf, err := w.dir.OpenFile(w.name, os.O_WRONLY, 0)
	if err != nil {
		w.berr = err
		return
	}
	a, err := w.f.Stat()
	if err == nil {
		var b os.FileInfo
		if b, err = bf.Stat(); err == nil && !os.SameFile(a, b) {
			err = fmt.Errorf("%s was replaced while it was written", w.f.Name())
		}
	}
	if err != nil {
		bf.Close()
		w.berr = err
		return
	}
	w.bf = bf
}

// File is the file written: its descriptor sets its mode and owner.
func (w *Writer) File() *os.File { return w.f }

// Truncate sets the file's size.
func (w *Writer) Truncate(size int64) error { return w.f.Truncate(size) }

// Allocate gives the file its size with its blocks reserved up front
// (fallocate where the system has it, else Truncate): writes at offsets
// then land in one contiguous allocation instead of filling holes.
func (w *Writer) Allocate(size int64) error { return allocate(w.f, size) }

// Sync makes what was written durable.
func (w *Writer) Sync() error { return w.f.Sync() }

// Close closes the file.
func (w *Writer) Close() error {
	if w.bf != nil {
		w.bf.Close()
	}
	err := w.f.Close()
	if w.ownDir {
		w.dir.Close()
	}
	return err
}
