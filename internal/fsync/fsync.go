// Package fsync makes file operations durable: the fsync of a file's data
// and of the directory that names it (standard library only).
package fsync

import "os"

// File fsyncs the file at path.
func File(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Dir fsyncs a directory, making renames and creations in it durable.
func Dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
