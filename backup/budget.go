package backup

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// DefaultMemory is the default Budget of backups and restores: chunk data
// in memory at once, across all partitions. With the runtime's own
// overhead, peak RSS stays under about 256 MiB whatever the partition
// sizes (bench/ measures it).
const DefaultMemory = 64 << 20

// minMemory is the smallest budget a user may ask for: one frame and its
// compressed form. A budget is never smaller than workMemory, though: what
// one chunk holds while its frames are compressed (and, restoring, its
// stored form and a frame), below which it could not be built.
const (
	minMemory  = 2*FrameSize + FrameSize/4
	workMemory = ChunkSize/FrameSize*frameSlot + FrameSize
)

// Budget bounds the bytes of chunk data (read, compressed, downloaded,
// decompressed) held in memory at once by every partition of a backup or
// restore together. A nil *Budget bounds nothing.
//
// It also bounds what base captures stage in memory ahead of their upload
// (spools), to half its size again: a spool that finds none free waits for
// it only while the uploads keep up (WaitSpool), and otherwise writes to
// its file instead.
type Budget struct {
	sem *semaphore.Weighted
	max int64
	// builds bounds the chunks whose frames are being read and compressed
	// at once, so that each can take what it still needs (workMemory).
	builds *semaphore.Weighted
	spool  *semaphore.Weighted
	// taken counts the bytes every spool's reader has taken (the uploads'
	// pace, shared: partitions upload side by side).
	taken atomic.Int64
}

// NewBudget returns a budget of n bytes (at least one chunk's worth:
// workMemory).
func NewBudget(n int64) *Budget {
	n = max(n, workMemory)
	return &Budget{sem: semaphore.NewWeighted(n), max: n, spool: semaphore.NewWeighted(n / 2), builds: semaphore.NewWeighted(max(1, n/(2*workMemory)))}
}

// Build waits until one more chunk may be built (its frames read and
// compressed) and returns the function that says it is built. A chunk
// keeps its compressed frames until it is stored: were the partitions'
// chunks all started at once, each could hold a part of the budget and
// wait for the rest. A nil budget bounds nothing.
func (b *Budget) Build(ctx context.Context) (func(), error) {
	if b == nil {
		return func() {}, nil
	}
	if err := b.builds.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { b.builds.Release(1) }) }, nil
}

// TrySpool takes n bytes of the spools' share if they are free now, and
// returns the function that gives them back; ok is false if they are not.
// A nil budget bounds nothing.
func (b *Budget) TrySpool(n int64) (release func(), ok bool) {
	return b.WaitSpool(context.Background(), n, 0)
}

// WaitSpool is TrySpool waiting up to wait for the bytes to be given back
// (0: not at all; below 0: until ctx ends).
func (b *Budget) WaitSpool(ctx context.Context, n int64, wait time.Duration) (release func(), ok bool) {
	if b == nil {
		return func() {}, true
	}
	switch {
	case wait == 0:
		ok = b.spool.TryAcquire(n)
	case wait < 0:
		ok = b.spool.Acquire(ctx, n) == nil
	default:
		wctx, cancel := context.WithTimeout(ctx, wait)
		ok = b.spool.Acquire(wctx, n) == nil
		cancel()
	}
	if !ok {
		return nil, false
	}
	var once sync.Once
	return func() { once.Do(func() { b.spool.Release(n) }) }, true
}

// spoolTaken counts n bytes a spool's reader took; spoolTotal is the total
// so far (0 for a nil budget).
func (b *Budget) spoolTaken(n int) {
	if b != nil {
		b.taken.Add(int64(n))
	}
}

func (b *Budget) spoolTotal() int64 {
	if b == nil {
		return 0
	}
	return b.taken.Load()
}

// Bytes is the budget's size (0 for nil: unbounded).
func (b *Budget) Bytes() int64 {
	if b == nil {
		return 0
	}
	return b.max
}

// Acquire waits until n bytes fit in the budget (n is capped at its size)
// and returns the function that gives them back.
func (b *Budget) Acquire(ctx context.Context, n int64) (func(), error) {
	s, err := b.Take(ctx, n)
	if err != nil {
		return nil, err
	}
	return s.Done, nil
}

// Share is bytes taken from a budget and given back in parts, as the data
// they stand for shrinks (a frame's content, once compressed, is only its
// compressed form). The zero Share and a nil one hold nothing.
type Share struct {
	mu   sync.Mutex
	b    *Budget
	left int64
}

// Take waits until n bytes fit in the budget (n is capped at its size) and
// returns them as a Share.
func (b *Budget) Take(ctx context.Context, n int64) (*Share, error) {
	if b == nil {
		return &Share{}, nil
	}
	n = min(max(n, 1), b.max)
	if err := b.sem.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return &Share{b: b, left: n}, nil
}

// Keep gives back all but n bytes of the share.
func (s *Share) Keep(n int64) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n = max(n, 0); s.b != nil && s.left > n {
		s.b.sem.Release(s.left - n)
		s.left = n
	}
}

// Done gives the whole share back.
func (s *Share) Done() { s.Keep(0) }

// ValidateMemory refuses a budget too small for one chunk.
func ValidateMemory(n int64) error {
	if n < minMemory {
		return fmt.Errorf("memory budget %d MiB is too small: it must hold one frame of a chunk (at least %d MiB; below %d MiB, %d MiB are used: what building one chunk takes)", n>>20, (minMemory+(1<<20)-1)>>20, workMemory>>20, workMemory>>20)
	}
	return nil
}

// LimitProcessMemory asks the Go runtime to keep the process's heap near
// budget plus slack for everything that is not chunk data (spools, SQLite
// page caches, listings, the runtime) plus 64 MiB, unless GOMEMLIMIT is
// set, and to collect once the heap has grown by gcPercent since the last
// collection (GOGC), unless GOGC is set. Backups and restores collect less
// often than by default (400): a restore's heap was mostly the budget's
// buffers, and collecting every time it doubled cost a quarter of a
// restore's time. Deep verify keeps the default (100): its chunks wait
// outside the heap, and at 400 the garbage of decrypting them grew to four
// times its live heap (60 MB, a sixth of its peak RSS). Backups give no
// slack (their compressed frames wait outside the heap), restores half
// the budget, deep verify none (it keeps nothing but chunks in flight).
func LimitProcessMemory(budget, slack int64, gcPercent int, env func(string) string) {
	if env("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(budget + slack + 64<<20)
	if env("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}
