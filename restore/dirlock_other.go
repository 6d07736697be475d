//go:build !unix

package restore

// lockDir cannot lock here; a restore assumes it is alone in dir.
func lockDir(string) (func(), error) { return func() {}, nil }

// freeBytes cannot tell here.
func freeBytes(string) (uint64, bool) { return 0, false }
