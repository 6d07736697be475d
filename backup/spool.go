package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// spool copies a reader into a local temporary file on its own goroutine,
// as fast as the disk takes it, while Read hands out what was copied so
// far: the upload starts at once and never waits for more than the copy
// has reached. A base capture reads its pages under a SQLite read
// transaction, which keeps checkpoints from passing it (so the WAL grows
// while it lasts): through a spool, that transaction lasts as long as the
// local copy, not as long as the upload.
type spool struct {
	f    *os.File
	done chan struct{} // closed when the copy ended (see err)

	mu      sync.Mutex
	cond    *sync.Cond
	written int64 // bytes in f
	ended   bool
	err     error // why the copy ended: nil at EOF
	off     int64 // Read's position
}

// newSpool starts copying src into a new file in dir (os.TempDir() if
// empty), named by pattern; finished runs on the copying goroutine when
// the copy ends, before Read sees the end (release the source there).
func newSpool(ctx context.Context, dir, pattern string, src io.Reader, finished func()) (*spool, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, fmt.Errorf("stage the base image: %w", err)
	}
	sp := &spool{f: f, done: make(chan struct{})}
	sp.cond = sync.NewCond(&sp.mu)
	go sp.copy(ctx, src, finished)
	return sp, nil
}

func (sp *spool) copy(ctx context.Context, src io.Reader, finished func()) {
	buf := make([]byte, 1<<20)
	var err error
	for err == nil {
		if err = context.Cause(ctx); err != nil {
			break
		}
		var n int
		n, err = io.ReadFull(src, buf)
		if n > 0 {
			if _, werr := sp.f.Write(buf[:n]); werr != nil {
				err = fmt.Errorf("stage the base image: %w", werr)
			}
			sp.mu.Lock()
			sp.written += int64(n)
			sp.cond.Broadcast()
			sp.mu.Unlock()
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = nil
	}
	finished()
	sp.mu.Lock()
	sp.ended, sp.err = true, err
	sp.cond.Broadcast()
	sp.mu.Unlock()
	close(sp.done)
}

// Read reads what the copy has written, waiting for more until it ends;
// it returns the copy's error, if it failed, once it has read all before.
func (sp *spool) Read(b []byte) (int, error) {
	sp.mu.Lock()
	for sp.off == sp.written && !sp.ended {
		sp.cond.Wait()
	}
	avail, ended, err := sp.written-sp.off, sp.ended, sp.err
	sp.mu.Unlock()
	if avail == 0 && ended {
		if err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	n, rerr := sp.f.ReadAt(b[:min(int64(len(b)), avail)], sp.off)
	sp.mu.Lock()
	sp.off += int64(n)
	sp.mu.Unlock()
	if rerr != nil && !errors.Is(rerr, io.EOF) {
		return n, fmt.Errorf("read the staged base image: %w", rerr)
	}
	return n, nil
}

// Close waits for the copy to end (cancel its context to end it early)
// and removes the file.
func (sp *spool) Close() error {
	<-sp.done
	name := sp.f.Name()
	sp.f.Close()
	return os.Remove(name)
}
