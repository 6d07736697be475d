//go:build !linux

package directio

import "os"

func create(dir *os.Root, name string) (*os.File, bool, error) {
	// os.Root never follows a symlink with O_CREATE|O_EXCL.
	f, err := dir.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	return f, false, err
}

func setDirect(*os.File, bool) error { return nil }

func allocate(f *os.File, size int64) error { return f.Truncate(size) }
