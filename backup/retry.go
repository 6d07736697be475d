package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"time"
)

// RetryPolicy says how often and how patiently a store call is retried.
type RetryPolicy struct {
	Attempts int           // total tries (default 6)
	Base     time.Duration // first backoff (default 200ms), doubling
	Max      time.Duration // backoff cap (default 5s)
}

// maxBuffered bounds what a retrying Get reads into memory.
const maxBuffered = MaxChunkBytes + MaxChunkBytes/8

// WithRetry wraps s so that transient failures (5xx, dropped connections,
// truncated bodies, timeouts) are retried with exponential backoff and
// jitter. Answers that are not transient (not found, exists, access denied,
// missing bucket, bad key, cancellation) are returned at once. Get reads the
// whole object before returning it, so a body cut short is retried too; List
// collects the whole listing first, so fn never sees an item twice.
func WithRetry(s Store, p RetryPolicy) Store {
	if p.Attempts <= 0 {
		p.Attempts = 6
	}
	if p.Base <= 0 {
		p.Base = 200 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	return &retrying{s: s, p: p}
}

type retrying struct {
	s Store
	p RetryPolicy
}

func permanent(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) || errors.Is(err, ErrAccess) ||
		errors.Is(err, ErrNoBucket) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrCorrupt) || errors.Is(err, errBadKey)
}

func (r *retrying) do(ctx context.Context, op string, fn func() error) error {
	var err error
	wait := r.p.Base
	for attempt := 1; ; attempt++ {
		if err = fn(); err == nil || permanent(err) || attempt >= r.p.Attempts {
			break
		}
		d := wait/2 + time.Duration(rand.Int63n(int64(wait)))
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, r.p.Max)
	}
	if err != nil && !permanent(err) {
		return fmt.Errorf("%s (after %d attempts): %w", op, r.p.Attempts, err)
	}
	return err
}

func (r *retrying) Put(ctx context.Context, key string, data []byte) error {
	return r.do(ctx, "put "+key, func() error { return r.s.Put(ctx, key, data) })
}

func (r *retrying) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	return r.do(ctx, "put "+key, func() error { return r.s.PutIfAbsent(ctx, key, data) })
}

func (r *retrying) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	var b []byte
	err := r.do(ctx, "get "+key, func() error {
		rc, err := r.s.Get(ctx, key)
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err = io.ReadAll(io.LimitReader(rc, maxBuffered+1))
		if err == nil && len(b) > maxBuffered {
			return &SizeError{Key: key, Limit: maxBuffered}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (r *retrying) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	var oi ObjectInfo
	err := r.do(ctx, "stat "+key, func() error {
		var err error
		oi, err = r.s.Stat(ctx, key)
		return err
	})
	return oi, err
}

func (r *retrying) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	var all []ObjectInfo
	err := r.do(ctx, "list "+prefix, func() error {
		all = all[:0]
		return r.s.List(ctx, prefix, func(oi ObjectInfo) error {
			all = append(all, oi)
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, oi := range all {
		if err := fn(oi); err != nil {
			return err
		}
	}
	return nil
}

func (r *retrying) Delete(ctx context.Context, key string) error {
	return r.do(ctx, "delete "+key, func() error { return r.s.Delete(ctx, key) })
}

func (r *retrying) String() string { return r.s.String() }
func (r *retrying) Close() error   { return r.s.Close() }
