package bufpool

import (
	"runtime"
	"testing"
)

// Buffers given back outlive a garbage collection (a sync.Pool's do not),
// up to the number the pool keeps; others are not taken back.
func TestPool_KeepsBuffersAcrossCollections(t *testing.T) {
	p := New(2, 1<<20)
	a, b, c := p.Get(), p.Get(), p.Get()
	for _, x := range []*[]byte{a, b, c} {
		if cap(*x) != 1<<20 || len(*x) != 0 {
			t.Fatalf("got a buffer of len %d cap %d", len(*x), cap(*x))
		}
	}
	*a = append(*a, "used"...)
	p.Put(a)
	p.Put(b)
	p.Put(c) // beyond what it keeps
	small := make([]byte, 0, 10)
	p.Put(&small) // another size
	runtime.GC()
	runtime.GC()
	got := map[*[]byte]bool{p.Get(): true, p.Get(): true}
	if !got[a] || !got[b] {
		t.Fatal("the buffers given back were not kept across collections")
	}
	if len(*a) != 0 {
		t.Error("a buffer came back not empty")
	}
	if d := p.Get(); d == c || cap(*d) != 1<<20 {
		t.Error("the pool kept more buffers than it should, or made one of another size")
	}
}
