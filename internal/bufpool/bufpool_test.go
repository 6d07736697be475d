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

// Values given back to a Free outlive a garbage collection, up to the
// number it keeps; beyond that, Get makes new ones.
func TestFree_KeepsValuesAcrossCollections(t *testing.T) {
	made := 0
	f := NewFree(2, func() *int { made++; v := made; return &v })
	a, b, c := f.Get(), f.Get(), f.Get()
	if made != 3 {
		t.Fatalf("made %d values for 3 Gets from an empty list", made)
	}
	f.Put(a)
	f.Put(b)
	f.Put(c) // beyond what it keeps
	runtime.GC()
	runtime.GC()
	got := map[*int]bool{f.Get(): true, f.Get(): true}
	if !got[a] || !got[b] || made != 3 {
		t.Fatalf("the values given back were not kept across collections (made %d)", made)
	}
	if d := f.Get(); d == c || made != 4 {
		t.Error("the list kept more values than it should")
	}
}
