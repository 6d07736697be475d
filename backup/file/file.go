// Package file is the local-directory backend of backup.Store: the embedded
// default (file:///path), also useful for a mounted network filesystem.
package file

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/fsync"
)

// Store keeps objects as files under Root. Writes go to a temporary file,
// are fsynced, then renamed (or hard-linked, for PutIfAbsent) into place and
// the directory fsynced, so an object is whole or absent even across a crash.
type Store struct{ Root string }

var _ backup.Store = (*Store)(nil)

const tmpMarker = ".flowkeep-tmp-"

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

func (s *Store) String() string { return "file://" + s.Root }
func (s *Store) Close() error   { return nil }

func (s *Store) path(key string) (string, error) {
	if err := backup.CheckKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.Root, filepath.FromSlash(key)), nil
}

// writeTemp writes data to a synced temporary file next to path.
func writeTemp(path string, data []byte) (string, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var r [6]byte
	rand.Read(r[:])
	tmp := filepath.Join(dir, tmpMarker+hex.EncodeToString(r[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// Put implements backup.Store.
func (s *Store) Put(_ context.Context, key string, data []byte) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	tmp, err := writeTemp(p, data)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", key, err)
	}
	return fsync.Dir(filepath.Dir(p))
}

// PutIfAbsent implements backup.Store with a hard link, which fails if the
// name exists.
func (s *Store) PutIfAbsent(_ context.Context, key string, data []byte) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	tmp, err := writeTemp(p, data)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("put %s: %w", key, backup.ErrExists)
		}
		return fmt.Errorf("put %s: %w", key, err)
	}
	return fsync.Dir(filepath.Dir(p))
}

// Get implements backup.Store.
func (s *Store) Get(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get %s: %w", key, backup.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
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

// List implements backup.Store.
func (s *Store) List(ctx context.Context, prefix string, fn func(backup.ObjectInfo) error) error {
	// Walk the deepest directory the prefix names completely.
	dir := s.Root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		dir = filepath.Join(s.Root, filepath.FromSlash(prefix[:i]))
	}
	var out []backup.ObjectInfo
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), tmpMarker) {
			return nil
		}
		rel, err := filepath.Rel(s.Root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		out = append(out, backup.ObjectInfo{Key: key, Size: info.Size(), Modified: info.ModTime()})
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	for _, o := range out {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
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
