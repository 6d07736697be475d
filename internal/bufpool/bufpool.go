// Package bufpool keeps a few large buffers for reuse across garbage
// collections.
//
// A sync.Pool is emptied by every collection: a process that moves tens of
// MiB per buffer under a memory limit collects often, and then allocates
// (zeroes, faults in) a fresh buffer for nearly every use. A Pool keeps up
// to a fixed number of buffers for good; beyond it, buffers are allocated
// and left to the collector.
package bufpool

// Pool is a free list of buffers of one capacity.
type Pool struct {
	free   chan *[]byte
	size   int
	alloc  func(int) []byte
	mapped bool
}

// New returns a pool that keeps up to keep buffers of capacity size.
func New(keep, size int) *Pool { return NewFunc(keep, size, nil) }

// NewMapped is New with buffers mapped outside the Go heap (on Linux):
// the collector neither counts their capacity nor clears them, and only
// the pages written to take memory. A buffer must not be used once it is
// given back.
func NewMapped(keep, size int) *Pool {
	return &Pool{free: make(chan *[]byte, keep), size: size, alloc: func(n int) []byte { return mapBuffer(n, false) }, mapped: true}
}

// NewHuge is NewMapped with buffers of 2 MiB or more mapped in whole
// transparent huge pages (on Linux, where they are on "always" or
// "madvise"): one page fault fills 2 MiB, but a buffer's memory grows by
// 2 MiB at a time. It suits buffers their users fill (a decoded frame, a
// downloaded chunk), not ones mostly left empty.
func NewHuge(keep, size int) *Pool {
	return &Pool{free: make(chan *[]byte, keep), size: size, alloc: func(n int) []byte { return mapBuffer(n, true) }, mapped: true}
}

// NewFunc is New with buffers made by alloc (e.g. aligned ones), which
// returns an empty slice of capacity size.
func NewFunc(keep, size int, alloc func(size int) []byte) *Pool {
	return &Pool{free: make(chan *[]byte, keep), size: size, alloc: alloc}
}

// Get returns an empty buffer of the pool's capacity.
func (p *Pool) Get() *[]byte {
	select {
	case b := <-p.free:
		*b = (*b)[:0]
		return b
	default:
		var b []byte
		if p.alloc != nil {
			b = p.alloc(p.size)
		} else {
			b = make([]byte, 0, p.size)
		}
		return &b
	}
}

// Put gives b back; one of another capacity, or beyond what the pool
// keeps, is left to the collector.
func (p *Pool) Put(b *[]byte) {
	if b == nil || cap(*b) != p.size {
		return
	}
	select {
	case p.free <- b:
	default:
		if p.mapped {
			unmapBuffer(*b)
		}
	}
}

// Free keeps up to a fixed number of values of any kind for reuse across
// garbage collections, as a Pool keeps buffers: for values that hold
// large buffers of their own (a zstd encoder's history), which a
// sync.Pool would drop at every collection and rebuild, faulting their
// memory in again.
type Free[T any] struct {
	free     chan T
	newValue func() T
}

// NewFree returns a free list that keeps up to keep values, making new
// ones with newValue.
func NewFree[T any](keep int, newValue func() T) *Free[T] {
	return &Free[T]{free: make(chan T, keep), newValue: newValue}
}

// Get returns a kept value, or a new one.
func (f *Free[T]) Get() T {
	select {
	case v := <-f.free:
		return v
	default:
		return f.newValue()
	}
}

// Put gives v back; beyond what the list keeps, it is left to the
// collector.
func (f *Free[T]) Put(v T) {
	select {
	case f.free <- v:
	default:
	}
}
