package bufpool

import "syscall"

// mapBuffer maps size bytes of anonymous memory: outside the Go heap, so
// the collector neither counts nor clears it, and only the pages written
// take memory.
func mapBuffer(size int) []byte {
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]byte, 0, size)
	}
	return b[:0]
}

func unmapBuffer(b []byte) {
	syscall.Munmap(b[:cap(b)])
}
