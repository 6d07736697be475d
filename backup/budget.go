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

// minMemory is the smallest budget: one chunk and its compressed form.
const minMemory = 2*ChunkSize + ChunkSize/4

// Budget bounds the bytes of chunk data (read, compressed, downloaded,
// decompressed) held in memory at once by every partition of a backup or
// restore together. A nil *Budget bounds nothing.
//
// It also bounds what base captures stage in memory ahead of their upload
// (spools), to half its size again: a spool that finds none free waits for
// it only while the uploads keep up (WaitSpool), and otherwise writes to
// its file instead.
type Budget struct {
	sem   *semaphore.Weighted
	max   int64
	spool *semaphore.Weighted
	// taken counts the bytes every spool's reader has taken (the uploads'
	// pace, shared: partitions upload side by side).
	taken atomic.Int64
}

// NewBudget returns a budget of n bytes (at least one chunk's worth).
func NewBudget(n int64) *Budget {
	n = max(n, minMemory)
	return &Budget{sem: semaphore.NewWeighted(n), max: n, spool: semaphore.NewWeighted(n / 2)}
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
	if b == nil {
		return func() {}, nil
	}
	n = min(max(n, 1), b.max)
	if err := b.sem.Acquire(ctx, n); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { b.sem.Release(n) }) }, nil
}

// AcquireSplit is Acquire for n bytes given back in two parts: the first
// first bytes (say, a chunk's content, done with once it is compressed)
// by the first function, the rest by the second.
func (b *Budget) AcquireSplit(ctx context.Context, n, first int64) (func(), func(), error) {
	if b == nil {
		return func() {}, func() {}, nil
	}
	n = min(max(n, 1), b.max)
	first = min(first, n)
	if err := b.sem.Acquire(ctx, n); err != nil {
		return nil, nil, err
	}
	var once1, once2 sync.Once
	return func() { once1.Do(func() { b.sem.Release(first) }) },
		func() { once2.Do(func() { b.sem.Release(n - first) }) }, nil
}

// ChunkCost is what one chunk of n bytes holds in memory while it moves:
// its content and its compressed form (at most a little larger).
func ChunkCost(n int64) int64 { return n + n + n/8 }

// ValidateMemory refuses a budget too small for one chunk.
func ValidateMemory(n int64) error {
	if n < minMemory {
		return fmt.Errorf("memory budget %d MiB is too small: it must hold one chunk (at least %d MiB)", n>>20, (minMemory+(1<<20)-1)>>20)
	}
	return nil
}

// LimitProcessMemory asks the Go runtime to keep the process's heap near
// budget plus slack for everything that is not chunk data (spools, SQLite
// page caches, listings, the runtime) plus 64 MiB, unless GOMEMLIMIT is
// set. Under that limit the collector runs less often than by default
// (GOGC=400 unless GOGC is set): a restore's heap is mostly the budget's
// buffers, and collecting every time it doubled cost a quarter of a
// restore's time. Backups give a slack of the budget again (their spools
// may hold half of it), restores half of it, deep verify none (it keeps
// nothing but chunks in flight).
func LimitProcessMemory(budget, slack int64, env func(string) string) {
	if env("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(budget + slack + 64<<20)
	if env("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}
