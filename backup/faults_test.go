package backup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// scripted wraps a store and scripts faults on its writes and reads, as a
// network between an agent and its bucket would make them: a write whose
// answer is lost after the store did it, a write held up in flight, a body
// with a bit flipped on the way back.
type scripted struct {
	backup.Store
	mu     sync.Mutex
	writes map[string]int
	reads  map[string]int
	// hold, if set, runs before a write reaches the store (it may block).
	hold func(ctx context.Context, key string)
	// lose reports whether the n-th write (from 0) of key loses its
	// answer if the store did it: the caller gets a 503.
	lose func(key string, n int) bool
	// dropAll answers every write with a 503, whatever the store did.
	dropAll bool
	// flip returns where to flip a bit in the n-th read of key, or -1.
	flip func(key string, n int) int
	// afterRead, if set, runs after a read, before it is answered.
	afterRead func(ctx context.Context, key string)
}

func newScripted(s backup.Store) *scripted {
	return &scripted{Store: s, writes: map[string]int{}, reads: map[string]int{}}
}

var errLostAnswer = errors.New("503 service unavailable (the write was done; its answer was lost)")

func (s *scripted) write(ctx context.Context, key string, do func() error) error {
	if s.hold != nil {
		s.hold(ctx, key)
	}
	s.mu.Lock()
	n := s.writes[key]
	s.writes[key]++
	s.mu.Unlock()
	err := do()
	if s.dropAll {
		return fmt.Errorf("put %s: %w", key, errLostAnswer)
	}
	if err != nil {
		return err
	}
	if s.lose != nil && s.lose(key, n) {
		return fmt.Errorf("put %s: %w", key, errLostAnswer)
	}
	return nil
}

func (s *scripted) read(ctx context.Context, key string, b []byte) []byte {
	s.mu.Lock()
	n := s.reads[key]
	s.reads[key]++
	s.mu.Unlock()
	if s.flip != nil {
		if at := s.flip(key, n); at >= 0 && at < len(b) {
			b = bytes.Clone(b)
			b[at] ^= 0x04 // as the integration fault proxy flips
		}
	}
	if s.afterRead != nil {
		s.afterRead(ctx, key)
	}
	return b
}

func (s *scripted) Put(ctx context.Context, key string, data []byte) error {
	return s.write(ctx, key, func() error { return s.Store.Put(ctx, key, data) })
}

func (s *scripted) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	return s.write(ctx, key, func() error { return s.Store.PutIfAbsent(ctx, key, data) })
}

func (s *scripted) PutIfMatch(ctx context.Context, key string, data []byte, v backup.ObjectVersion) (backup.ObjectVersion, error) {
	var nv backup.ObjectVersion
	err := s.write(ctx, key, func() error {
		var err error
		nv, err = s.Store.PutIfMatch(ctx, key, data, v)
		return err
	})
	if err != nil {
		return "", err
	}
	return nv, nil
}

func (s *scripted) GetVersion(ctx context.Context, key string, limit int64) ([]byte, backup.ObjectVersion, error) {
	b, v, err := s.Store.GetVersion(ctx, key, limit)
	if err != nil {
		return nil, "", err
	}
	return s.read(ctx, key, b), v, nil
}

func (s *scripted) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := s.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(s.read(ctx, key, b))), nil
}

func fastRetry(s backup.Store) backup.Store {
	return backup.WithRetry(s, backup.RetryPolicy{Attempts: 4, Base: time.Millisecond, Max: 5 * time.Millisecond})
}
