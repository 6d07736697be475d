package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// spool copies a reader on its own goroutine, as fast as the source gives,
// while Read hands out what was copied so far: the upload starts at once
// and never waits for more than the copy has reached. What the upload has
// not taken yet waits in memory, as far as the budget's share for spools
// (shared by every partition's spool) allows, and beyond it in a local
// temporary file. A base capture reads its pages under a SQLite read
// transaction, which keeps checkpoints from passing it (so the WAL grows
// while it lasts): through a spool, that transaction lasts as long as the
// copy, not as long as a slow upload; and when the upload keeps up, no byte
// touches the disk.
//
// When the memory share is full the copy waits for the upload, rather than
// write to the file, as long as the uploads (of every spool sharing the
// budget) take at least keepUpRate: then they are bound by this machine's
// CPU (compressing, hashing), not by a slow link, and the read transaction
// lasts about as long as they do (a second per 128 MiB at most), while the
// file would only cost a write and a read of every byte (measured: a
// fifth of a first backup's CPU over a local S3 server). Once the uploads
// fall behind that pace, the copy writes what does not fit to the file.
type spool struct {
	dir, pattern string
	budget       *Budget       // its share for spools bounds what waits in memory
	done         chan struct{} // closed when the copy ended (see err)
	ctx          context.Context
	began        time.Time
	behind       bool // the uploads fell behind keepUpRate: spill, never wait
	// noFile is set once the file could not be made or written (a full
	// or read-only temporary directory): the copy then waits for the
	// upload, as a capture with no room to stage does.
	noFile bool
	// unlinked says the file was removed from its directory as soon as it
	// was made (a killed backup leaves nothing behind).
	unlinked bool

	mu    sync.Mutex
	cond  *sync.Cond
	queue []spoolItem // what Read has not taken yet, in order
	mem   int         // bytes of queue held in memory
	f     *os.File    // the overflow file (nil until needed)
	fend  int64       // bytes written to f
	ended bool
	err   error // why the copy ended: nil at EOF
	spilt int64 // bytes that went through the file
	// firstRead is when Read first handed out bytes (the upload's pace
	// counts from then: not its start-up), taken0 the budget's spoolTotal
	// then.
	firstRead time.Time
	taken0    int64
}

// spoolItem is a piece of the stream: in memory (b), or in the overflow
// file at off (n bytes).
type spoolItem struct {
	b       []byte
	block   *[]byte // the pooled block b is in (nil for a file item)
	release func()  // gives b's share of the budget back
	off, n  int64
}

// spoolBlock is the size of the pieces a spool copies.
const spoolBlock = 1 << 20

// keepUpRate is the pace of the uploads down to which a full spool waits
// for them instead of writing to its file, counted from the upload's first
// read; keepUpGrace is how long after that read it waits whatever the
// pace; keepUpStart how long it waits for that first read; keepUpWait
// bounds one wait.
const (
	keepUpRate  = 128 << 20 // bytes per second
	keepUpGrace = time.Second
	keepUpStart = 2 * time.Second
	keepUpWait  = 100 * time.Millisecond
)

var spoolBlocks = sync.Pool{New: func() any { b := make([]byte, spoolBlock); return &b }}

// newSpool starts copying src; what waits beyond the budget's share for
// spools goes to a new file in dir (os.TempDir() if empty) named by pattern. finished runs
// on the copying goroutine when the copy ends, before Read sees the end
// (release the source there).
func newSpool(ctx context.Context, dir, pattern string, budget *Budget, src io.Reader, finished func()) *spool {
	sp := &spool{dir: dir, pattern: pattern, budget: budget, done: make(chan struct{}), ctx: ctx, began: time.Now()}
	sp.cond = sync.NewCond(&sp.mu)
	go sp.copy(ctx, src, finished)
	return sp
}

func (sp *spool) copy(ctx context.Context, src io.Reader, finished func()) {
	var err error
	for err == nil {
		if err = context.Cause(ctx); err != nil {
			break
		}
		block := spoolBlocks.Get().(*[]byte)
		var n int
		n, err = io.ReadFull(src, *block)
		if n > 0 {
			if werr := sp.add(block, n); werr != nil {
				err = werr
			}
		} else {
			spoolBlocks.Put(block)
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

// add queues the first n bytes of block: in memory while the budget has
// room, else at the file's end (and block goes back to the pool).
func (sp *spool) add(block *[]byte, n int) error {
	b := (*block)[:n]
	release, ok := sp.budget.TrySpool(spoolBlock)
	if !ok && sp.keepingUp() {
		// A wait that times out (a stall: a collection, a slow request)
		// sends this block to the file; the pace decides the next.
		release, ok = sp.budget.WaitSpool(sp.ctx, spoolBlock, keepUpWait)
	}
	if !ok && !sp.noFile {
		ok = sp.toFile(b)
		if ok {
			spoolBlocks.Put(block)
			return nil
		}
	}
	if !ok {
		// No file: wait for the upload however long it takes.
		if release, ok = sp.budget.WaitSpool(sp.ctx, spoolBlock, -1); !ok {
			spoolBlocks.Put(block)
			return context.Cause(sp.ctx)
		}
	}
	sp.mu.Lock()
	sp.queue = append(sp.queue, spoolItem{b: b, block: block, release: release})
	sp.mem += len(b)
	sp.cond.Broadcast()
	sp.mu.Unlock()
	return nil
}

// toFile appends b to the file, made (and at once removed from its
// directory, where the system allows) on first use. If the file cannot be
// made or written it reports false, and the spool stops using it.
func (sp *spool) toFile(b []byte) bool {
	sp.mu.Lock()
	f, off := sp.f, sp.fend
	sp.mu.Unlock()
	if f == nil {
		var err error
		if f, err = os.CreateTemp(sp.dir, sp.pattern); err != nil {
			sp.noFile = true
			return false
		}
		sp.unlinked = os.Remove(f.Name()) == nil
		sp.mu.Lock()
		sp.f = f
		sp.mu.Unlock()
	}
	// Only this goroutine writes, at the end, where Read never reads yet.
	if _, err := f.WriteAt(b, off); err != nil {
		sp.noFile = true
		return false
	}
	sp.mu.Lock()
	sp.queue = append(sp.queue, spoolItem{off: off, n: int64(len(b))})
	sp.fend += int64(len(b))
	sp.spilt += int64(len(b))
	sp.cond.Broadcast()
	sp.mu.Unlock()
	return true
}

// keepingUp says whether the uploads keep the pace at which the copy
// waits for them rather than spill (only the copying goroutine asks).
func (sp *spool) keepingUp() bool {
	if sp.behind {
		return false
	}
	sp.mu.Lock()
	first, taken0 := sp.firstRead, sp.taken0
	sp.mu.Unlock()
	if first.IsZero() {
		// The upload has not begun: wait for it a little.
		sp.behind = time.Since(sp.began) > keepUpStart
		return !sp.behind
	}
	elapsed := time.Since(first)
	if elapsed < keepUpGrace {
		return true
	}
	if float64(sp.budget.spoolTotal()-taken0) < keepUpRate*elapsed.Seconds() {
		sp.behind = true
	}
	return !sp.behind
}

// Read reads what the copy has queued, waiting for more until it ends; it
// returns the copy's error, if it failed, once it has read all before.
func (sp *spool) Read(p []byte) (int, error) {
	sp.mu.Lock()
	for len(sp.queue) == 0 && !sp.ended {
		sp.cond.Wait()
	}
	if len(sp.queue) == 0 {
		err := sp.err
		sp.mu.Unlock()
		if err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	if sp.firstRead.IsZero() {
		sp.firstRead, sp.taken0 = time.Now(), sp.budget.spoolTotal()
	}
	it := &sp.queue[0]
	if it.block != nil {
		n := copy(p, it.b)
		sp.budget.spoolTaken(n)
		it.b = it.b[n:]
		sp.mem -= n
		if len(it.b) == 0 {
			it.free()
			sp.queue = sp.queue[1:]
		}
		sp.mu.Unlock()
		return n, nil
	}
	f, off, want := sp.f, it.off, min(int64(len(p)), it.n)
	sp.mu.Unlock()
	n, err := f.ReadAt(p[:want], off)
	sp.budget.spoolTaken(n)
	sp.mu.Lock()
	it = &sp.queue[0]
	it.off += int64(n)
	it.n -= int64(n)
	if it.n == 0 {
		sp.queue = sp.queue[1:]
	}
	sp.mu.Unlock()
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("read the staged base image: %w", err)
	}
	return n, nil
}

// Spilt is how many bytes went through the file (0: the upload kept up).
func (sp *spool) Spilt() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.spilt
}

// Close waits for the copy to end (cancel its context to end it early)
// and removes the file, if there is one.
func (sp *spool) Close() error {
	<-sp.done
	sp.mu.Lock()
	f := sp.f
	for i := range sp.queue {
		sp.queue[i].free()
	}
	sp.f, sp.queue = nil, nil
	sp.mu.Unlock()
	if f == nil {
		return nil
	}
	f.Close()
	if sp.unlinked {
		return nil
	}
	return os.Remove(f.Name())
}

// free gives an in-memory item's block back to the pool and its share of
// the budget back.
func (it *spoolItem) free() {
	if it.block == nil {
		return
	}
	spoolBlocks.Put(it.block)
	it.release()
	it.block, it.b = nil, nil
}
