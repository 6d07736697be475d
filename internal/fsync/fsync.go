// Package fsync makes file operations durable: the fsync of a file's data
// and of the directory that names it (standard library only).
package fsync

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// File fsyncs the file at path.
func File(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// syncDir is the directory fsync itself; tests replace it.
var syncDir = func(d *os.File) error { return d.Sync() }

// Dir fsyncs a directory, making renames and creations in it durable.
// File systems that cannot fsync a directory (some network and FUSE file
// systems answer EINVAL or ENOTSUP) are tolerated, as restic's local
// backend does: there is nothing more they can promise.
func Dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return DirFile(d)
}

// DirFile is Dir for a directory already open.
func DirFile(d *os.File) error {
	if err := syncDir(d); err != nil && !unsupported(err) {
		return fmt.Errorf("fsync directory %s: %w", d.Name(), err)
	}
	return nil
}

func unsupported(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP)
}

// MkdirAll is os.MkdirAll that also makes every directory it creates
// durable: after each is created, its parent is fsynced, so a crash cannot
// lose a directory that a later durable file lives in.
func MkdirAll(dir string, perm os.FileMode) error {
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		return nil
	}
	// Find the missing directories, outermost first.
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		d := missing[i]
		if err := os.Mkdir(d, perm); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		if err := Dir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// TempPrefix starts the name of every temporary file WriteFile makes
// beside its target, so that a killed writer's leftovers can be told apart
// (and swept: the file backup store does).
const TempPrefix = ".flowkeep-tmp-"

// WriteFile writes data to path atomically and durably: a temporary file
// beside it (named TempPrefix...), fsynced, then renamed over path (or, if
// replace is false, linked to path, failing with an error wrapping
// os.ErrExist if path exists), then the directory fsynced. A crash leaves
// the old file or the new one, never a mix.
func WriteFile(path string, data []byte, perm os.FileMode, replace bool) error {
	return WriteFileOwned(path, data, perm, replace, -1, -1)
}

// WriteFileOwned is WriteFile that also gives the file to uid and gid (-1
// leaves either as it is). Mode and owner are set through the temporary
// file's descriptor before it takes its name, and every step works in the
// directory opened once, never following a symlink: when root writes into
// a directory another user owns, that user cannot swap a name for a
// symlink and have root chmod or chown what it points to.
func WriteFileOwned(path string, data []byte, perm os.FileMode, replace bool, uid, gid int) error {
	root, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer root.Close()
	name := filepath.Base(path)
	f, tmp, err := createTemp(root)
	if err != nil {
		return err
	}
	defer root.Remove(tmp)
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil && (uid >= 0 || gid >= 0) {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if replace {
		err = root.Rename(tmp, name)
	} else {
		err = root.Link(tmp, name)
	}
	if err != nil {
		return err
	}
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	return DirFile(d)
}

// createTemp creates a new file named TempPrefix... in root: O_EXCL, and
// os.Root opens with O_NOFOLLOW (and never follows a symlink with
// O_CREATE|O_EXCL), so it is never an existing file or a symlink's target.
func createTemp(root *os.Root) (*os.File, string, error) {
	for try := 0; ; try++ {
		var b [8]byte
		rand.Read(b[:])
		name := TempPrefix + hex.EncodeToString(b[:])
		f, err := root.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) && try < 100 {
			continue
		}
		return f, name, err
	}
}
