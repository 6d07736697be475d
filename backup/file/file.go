// Package file is the local-directory backend of backup.Store: the embedded
// default (file:///path), also useful for a mounted network filesystem.
package file

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/fsync"
)

// Store keeps objects as files under Root. Writes go to a temporary file,
// are fsynced, then renamed (or hard-linked, for PutIfAbsent) into place and
// the directory fsynced, so an object is whole or absent even across a crash.
type Store struct{ Root string }

var (
	_ backup.Store       = (*Store)(nil)
	_ backup.TempSweeper = (*Store)(nil)
)

// tmpMarker starts the names of temporary files (see fsync.WriteFile).
const tmpMarker = fsync.TempPrefix

// New opens a store rooted at an existing directory.
func New(root string) (*Store, error) {
	st, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: directory %s does not exist (create it with mkdir -p)", backup.ErrNoBucket, root)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", root)
	}
	return &Store{Root: root}, nil
}

// Create is New for a destination: a missing directory is created (with
// its parents), durably.
func Create(root string) (*Store, error) {
	if err := fsync.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create backup directory %s: %w", root, err)
	}
	return New(root)
}

func (s *Store) String() string { return "file://" + s.Root }
func (s *Store) Close() error   { return nil }

func (s *Store) path(key string) (string, error) {
	if err := backup.CheckKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.Root, filepath.FromSlash(key)), nil
}

// Put implements backup.Store.
func (s *Store) Put(_ context.Context, key string, data []byte) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := write(p, data, true); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// PutIfAbsent implements backup.Store with a hard link, which fails if the
// name exists.
func (s *Store) PutIfAbsent(_ context.Context, key string, data []byte) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := write(p, data, false); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("put %s: %w", key, backup.ErrExists)
		}
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// write stores an object's file, its directories made first, through a
// temporary file (fsync.TempPrefix...) that is renamed over it, or, unless
// replace, linked to it.
func write(path string, data []byte, replace bool) error {
	if err := fsync.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return fsync.WriteFile(path, data, 0o644, replace)
}

// PutIfMatch implements backup.Store. Conditional writes to the store take
// an exclusive lock on one file, casLockName at its root (flock: released
// by the kernel when a writer dies; on NFS it is a byte-range lock the
// server keeps), read the object's version, and rename the new object over
// it or, for the zero version, link it into place (which fails if another
// writer created it meanwhile). The check and the write are atomic against
// every other PutIfMatch, and PutIfAbsent cannot create what exists; a
// plain Put or Delete racing a PutIfMatch of the same key may be replaced
// by it, as flowkeep never mixes them on one key.
func (s *Store) PutIfMatch(ctx context.Context, key string, data []byte, v backup.ObjectVersion) (backup.ObjectVersion, error) {
	p, err := s.path(key)
	if err != nil {
		return "", err
	}
	unlock, err := lockFile(ctx, filepath.Join(s.Root, casLockName))
	if err != nil {
		return "", fmt.Errorf("put %s: lock for a conditional write: %w", key, err)
	}
	defer unlock()
	var cur backup.ObjectVersion // none: no object
	switch b, err := os.ReadFile(p); {
	case err == nil:
		cur = contentVersion(b)
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("put %s: %w", key, err)
	}
	if cur != v {
		return "", fmt.Errorf("put %s: %w", key, backup.ErrConflict)
	}
	if err := write(p, data, v != ""); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("put %s: %w", key, backup.ErrConflict)
		}
		return "", fmt.Errorf("put %s: %w", key, err)
	}
	return contentVersion(data), nil
}

// casLockName is the file at the store's root that conditional writes lock.
// It is created once and never removed (removing a lock file lets a waiter
// lock a file no longer named); List skips it.
const casLockName = ".flowkeep-cas.lock"

// contentVersion is a file's version: a hash of its content (files carry
// no write counter that survives a rename, and an inode number is reused).
func contentVersion(b []byte) backup.ObjectVersion {
	sum := sha256.Sum256(b)
	return backup.ObjectVersion(hex.EncodeToString(sum[:16]))
}

// GetVersion implements backup.Store.
func (s *Store) GetVersion(ctx context.Context, key string, limit int64) ([]byte, backup.ObjectVersion, error) {
	rc, err := s.Get(ctx, key)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	b, err := backup.ReadLimited(rc, key, limit)
	if err != nil {
		return nil, "", fmt.Errorf("get %s: %w", key, err)
	}
	return b, contentVersion(b), nil
}

// Get implements backup.Store.
func (s *Store) Get(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, openReadFlags, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get %s: %w", key, backup.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	// An object is a regular file: a directory there is no object (as
	// Stat says), and a FIFO, socket or device (which only someone who can
	// write to the location's directory puts there) is not one.
	st, err := f.Stat()
	switch {
	case err != nil:
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, err)
	case st.IsDir():
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, backup.ErrNotFound)
	case !st.Mode().IsRegular():
		f.Close()
		return nil, fmt.Errorf("get %s: %w: not a regular file (%v)", key, backup.ErrCorrupt, st.Mode().Type())
	}
	return f, nil
}

// Stat implements backup.Store.
func (s *Store) Stat(_ context.Context, key string) (backup.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return backup.ObjectInfo{}, err
	}
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && st.IsDir()) {
		return backup.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, backup.ErrNotFound)
	}
	if err != nil {
		return backup.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, err)
	}
	return backup.ObjectInfo{Key: key, Size: st.Size(), Modified: st.ModTime()}, nil
}

// List implements backup.Store. It walks the directories in key order
// (a directory d sorts as "d/"), one directory's names in memory at a time,
// skipping directories whose keys all sort at or before after.
func (s *Store) List(ctx context.Context, prefix, after string, fn func(backup.ObjectInfo) error) error {
	// Walk the deepest directory the prefix names completely.
	dirKey := ""
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		dirKey = prefix[:i+1]
	}
	err := s.walk(ctx, dirKey, prefix, after, fn)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil && !isCallerErr(err) {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	return unwrapCaller(err)
}

// callerErr marks an error fn returned, so List passes it on unwrapped.
type callerErr struct{ err error }

func (c callerErr) Error() string { return c.err.Error() }

func isCallerErr(err error) bool {
	var c callerErr
	return errors.As(err, &c)
}

func unwrapCaller(err error) error {
	var c callerErr
	if errors.As(err, &c) {
		return c.err
	}
	return err
}

// walk lists the directory whose keys start with dirKey ("" or ending in /).
func (s *Store) walk(ctx context.Context, dirKey, prefix, after string, fn func(backup.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(s.Root, filepath.FromSlash(dirKey)))
	if err != nil {
		return err
	}
	type ent struct {
		key string // sort key: a directory ends in "/"
		d   fs.DirEntry
	}
	list := make([]ent, 0, len(ents))
	for _, d := range ents {
		k := dirKey + d.Name()
		if d.IsDir() {
			k += "/"
		} else if strings.HasPrefix(d.Name(), tmpMarker) || !d.Type().IsRegular() || dirKey == "" && d.Name() == casLockName {
			continue
		}
		list = append(list, ent{k, d})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].key < list[j].key })
	for _, e := range list {
		if e.d.IsDir() {
			// Keys inside start with e.key: skip the directory if none can
			// match the prefix, or all sort at or before after.
			if !strings.HasPrefix(e.key, prefix) && !strings.HasPrefix(prefix, e.key) {
				continue
			}
			if after != "" && e.key < after && !strings.HasPrefix(after, e.key) {
				continue
			}
			if err := s.walk(ctx, e.key, prefix, after, fn); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		if !strings.HasPrefix(e.key, prefix) || e.key <= after {
			continue
		}
		info, err := e.d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return err
		}
		if err := fn(backup.ObjectInfo{Key: e.key, Size: info.Size(), Modified: info.ModTime()}); err != nil {
			return callerErr{err}
		}
	}
	return nil
}

// SweepTemp removes the temporary files that writers killed mid-write left
// behind, if they are older than age (a live writer's are younger). It
// implements backup.TempSweeper; prune calls it.
func (s *Store) SweepTemp(ctx context.Context, age time.Duration) (int, error) {
	n := 0
	cutoff := time.Now().Add(-age)
	err := filepath.WalkDir(s.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.IsDir() || !strings.HasPrefix(d.Name(), tmpMarker) {
			return nil
		}
		if info, err := d.Info(); err == nil && info.ModTime().Before(cutoff) {
			if err := os.Remove(p); err == nil {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("sweep temporary files in %s: %w", s.Root, err)
	}
	return n, nil
}

// Delete implements backup.Store.
func (s *Store) Delete(_ context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}
