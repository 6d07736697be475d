package bufpool

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"
)

// Mapped buffers of every size hold what they are asked for, end to end;
// with NewHuge those of a huge page or more are mapped in whole, aligned
// huge pages (asked for with MADV_HUGEPAGE); and one given back beyond
// what the pool keeps is unmapped whole.
func TestMapped_BuffersAreWholeAndHugePagesAligned(t *testing.T) {
	for _, huge := range []bool{false, true} {
		for _, size := range []int{4096, 1 << 20, hugePage, 4 << 20, 4<<20 + 512<<10, 36<<20 + 512} {
			checkMapped(t, huge, size)
		}
	}
}

func checkMapped(t *testing.T, huge bool, size int) {
	t.Helper()
	p := NewMapped(1, size)
	if huge {
		p = NewHuge(1, size)
	}
	a, b := p.Get(), p.Get()
	for _, x := range []*[]byte{a, b} {
		if cap(*x) != size || len(*x) != 0 {
			t.Fatalf("size %d: a buffer of len %d cap %d", size, len(*x), cap(*x))
		}
		*x = (*x)[:size]
		for i := range *x {
			(*x)[i] = byte(i)
		}
		if (*x)[size-1] != byte(size-1) {
			t.Fatalf("size %d: the last byte did not keep what was written", size)
		}
	}
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(*b)))
	if huge && size >= hugePage && addr%hugePage != 0 {
		t.Errorf("size %d: mapped at %#x, not on a huge page boundary", size, addr)
	}
	p.Put(a)
	p.Put(b) // beyond keep: unmapped
	if mapped(t, addr) || mapped(t, addr+uintptr(mappedLen(size, huge))-1) {
		t.Errorf("size %d: the buffer given back beyond what the pool keeps is still mapped", size)
	}
	if c := p.Get(); unsafe.SliceData(*c) != unsafe.SliceData(*a) {
		t.Errorf("size %d: the kept buffer was not given out again", size)
	}
}

// mapped says whether addr lies in a mapping of this process.
func mapped(t *testing.T, addr uintptr) bool {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skip(err)
	}
	for _, l := range strings.Split(string(maps), "\n") {
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(l, "%x-%x", &lo, &hi); n == 2 && lo <= addr && addr < hi {
			return true
		}
	}
	return false
}

// A buffer of the pool's size that mapBuffer did not map (made on the heap
// when a mapping failed) is never unmapped when the pool gives it up.
func TestMapped_HeapBuffersAreNeverUnmapped(t *testing.T) {
	p := NewMapped(1, 3<<20)
	p.Put(p.Get())
	heap := make([]byte, 0, 3<<20)
	p.Put(&heap) // the pool is full: given up
	heap = heap[:cap(heap)]
	for i := range heap {
		heap[i] = 1 // faults if its pages were unmapped
	}
}
