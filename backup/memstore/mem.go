// Package memstore is an in-memory backup.Store for unit tests.
package memstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// Store keeps objects in a map. Counters record calls, for tests that bound
// requests. It is a backup.Retainer with the strictest semantics a backend
// has (GCS object retention): a locked object can be neither deleted nor
// replaced, and its lock never shortened, until the lock ends by the
// store's clock (SetClock).
type Store struct {
	mu      sync.Mutex
	objects map[string]memObject
	writes  int64 // every write's number: its version
	Calls   map[string]int
	now     func() time.Time
}

type memObject struct {
	data []byte
	mod  time.Time
	gen  int64
	ret  backup.Retention
}

// store puts an object, a new version of it; s.mu is held.
func (s *Store) store(key string, data []byte) backup.ObjectVersion {
	s.writes++
	s.objects[key] = memObject{append([]byte(nil), data...), s.clock(), s.writes, backup.Retention{}}
	return version(s.writes)
}

// clock is the store's time; s.mu is held.
func (s *Store) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// SetClock makes now the store's time: what locks are judged by and what
// new objects' modification times are (nil: time.Now).
func (s *Store) SetClock(now func() time.Time) {
	s.mu.Lock()
	s.now = now
	s.mu.Unlock()
}

// locked refuses to delete or replace a locked object; s.mu is held.
func (s *Store) locked(op, key string) error {
	if o, ok := s.objects[key]; ok && o.ret.Holds(s.clock()) {
		return fmt.Errorf("%s %s: %w until %s", op, key, backup.ErrObjectLocked, o.ret.Until.UTC().Format(time.RFC3339))
	}
	return nil
}

var _ backup.Retainer = (*Store)(nil)

// PutRetained implements backup.Retainer.
func (s *Store) PutRetained(_ context.Context, key string, data []byte, r backup.Retention) error {
	if err := backup.CheckKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("put")
	if _, ok := s.objects[key]; ok {
		return fmt.Errorf("put %s: %w", key, backup.ErrExists)
	}
	s.store(key, data)
	o := s.objects[key]
	o.ret = r
	s.objects[key] = o
	return nil
}

// SetRetention implements backup.Retainer: a lock that still holds is
// never shortened, nor a COMPLIANCE one turned into GOVERNANCE.
func (s *Store) SetRetention(_ context.Context, key string, r backup.Retention) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("retain")
	o, ok := s.objects[key]
	if !ok {
		return fmt.Errorf("lock %s: %w", key, backup.ErrNotFound)
	}
	if o.ret.Holds(s.clock()) && (r.Until.Before(o.ret.Until) || (o.ret.Mode == backup.LockCompliance && r.Mode != backup.LockCompliance)) {
		return fmt.Errorf("lock %s: %w: a lock is never shortened or weakened", key, backup.ErrObjectLocked)
	}
	o.ret = r
	s.objects[key] = o
	return nil
}

// Undelete implements backup.Retainer: a locked object here can be neither
// deleted nor replaced, so nothing is ever hidden.
func (s *Store) Undelete(context.Context, string, func(string)) (int, error) { return 0, nil }

func version(gen int64) backup.ObjectVersion { return backup.ObjectVersion(strconv.FormatInt(gen, 10)) }

var _ backup.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store { return &Store{objects: map[string]memObject{}, Calls: map[string]int{}} }

func (s *Store) String() string { return "mem://" }
func (s *Store) Close() error   { return nil }

func (s *Store) count(op string) {
	s.Calls[op]++
}

// Put implements backup.Store.
func (s *Store) Put(_ context.Context, key string, data []byte) error {
	if err := backup.CheckKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("put")
	if err := s.locked("put", key); err != nil {
		return err
	}
	s.store(key, data)
	return nil
}

// PutIfAbsent implements backup.Store.
func (s *Store) PutIfAbsent(_ context.Context, key string, data []byte) error {
	if err := backup.CheckKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("put")
	if _, ok := s.objects[key]; ok {
		return fmt.Errorf("put %s: %w", key, backup.ErrExists)
	}
	s.store(key, data)
	return nil
}

// PutIfMatch implements backup.Store: versions are write numbers, so none
// repeats.
func (s *Store) PutIfMatch(_ context.Context, key string, data []byte, v backup.ObjectVersion) (backup.ObjectVersion, error) {
	if err := backup.CheckKey(key); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("put")
	var cur backup.ObjectVersion // none: no object
	if o, ok := s.objects[key]; ok {
		cur = version(o.gen)
	}
	if cur != v {
		return "", fmt.Errorf("put %s: %w", key, backup.ErrConflict)
	}
	if err := s.locked("put", key); err != nil {
		return "", err
	}
	return s.store(key, data), nil
}

// Get implements backup.Store.
func (s *Store) Get(_ context.Context, key string) (io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("get")
	o, ok := s.objects[key]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, backup.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(o.data)), nil
}

// GetVersion implements backup.Store.
func (s *Store) GetVersion(_ context.Context, key string, limit int64) ([]byte, backup.ObjectVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("get")
	o, ok := s.objects[key]
	if !ok {
		return nil, "", fmt.Errorf("get %s: %w", key, backup.ErrNotFound)
	}
	if int64(len(o.data)) > limit {
		return nil, "", &backup.SizeError{Key: key, Limit: limit}
	}
	return append([]byte(nil), o.data...), version(o.gen), nil
}

// Stat implements backup.Store.
func (s *Store) Stat(_ context.Context, key string) (backup.ObjectInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("stat")
	o, ok := s.objects[key]
	if !ok {
		return backup.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, backup.ErrNotFound)
	}
	return backup.ObjectInfo{Key: key, Size: int64(len(o.data)), Modified: o.mod, Retention: o.ret}, nil
}

// List implements backup.Store.
func (s *Store) List(_ context.Context, prefix, after string, fn func(backup.ObjectInfo) error) error {
	s.mu.Lock()
	s.count("list")
	var out []backup.ObjectInfo
	for k, o := range s.objects {
		if strings.HasPrefix(k, prefix) && k > after {
			out = append(out, backup.ObjectInfo{Key: k, Size: int64(len(o.data)), Modified: o.mod, Retention: o.ret})
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	for _, o := range out {
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements backup.Store.
func (s *Store) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count("delete")
	if err := s.locked("delete", key); err != nil {
		return err
	}
	delete(s.objects, key)
	return nil
}

// Mutate lets a test damage an object in place.
func (s *Store) Mutate(key string, fn func([]byte) []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objects[key]
	if !ok {
		return false
	}
	o.data = fn(append([]byte(nil), o.data...))
	s.objects[key] = o
	return true
}

// ResetCalls zeroes the call counters.
func (s *Store) ResetCalls() {
	s.mu.Lock()
	s.Calls = map[string]int{}
	s.mu.Unlock()
}
