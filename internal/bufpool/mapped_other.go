//go:build !linux

package bufpool

func mapBuffer(size int, _ bool) []byte { return make([]byte, 0, size) }

func unmapBuffer([]byte) {}
