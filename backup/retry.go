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
// missing bucket, bad key, conflict, cancellation) are returned at once. Get
// reads the whole object before returning it, so a body cut short is
// retried too; List streams and, after a failure, resumes after the last key
// it delivered, so fn never sees an item twice.
//
// A PutIfMatch whose attempt failed ambiguously (the write may have been
// done, its answer lost) and whose retry then meets a conflict reads the
// object back: if it holds exactly this write's bytes, the write was this
// call's own, and its version is returned, not ErrConflict. (Conditional
// writers make every write's content unique: see Store.) If the object
// cannot be read back, the error says the write's fate is unknown and does
// not wrap ErrConflict.
func WithRetry(s Store, p RetryPolicy) Store {
	return &retrying{s: s, p: p.withDefaults()}
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = 6
	}
	if p.Base <= 0 {
		p.Base = 200 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	return p
}

// Retry runs fn under policy p, as a WithRetry store runs each call: for
// calls outside a Store, such as opening one (a 503 from the first request
// to a bucket is as transient as any other).
func Retry(ctx context.Context, p RetryPolicy, op string, fn func() error) error {
	return (&retrying{p: p.withDefaults()}).do(ctx, op, fn)
}

type retrying struct {
	s Store
	p RetryPolicy
}

// stopped wraps an error a List callback returned: it is the caller's, and
// never retried.
type stopped struct{ err error }

func (s stopped) Error() string { return s.err.Error() }
func (s stopped) Unwrap() error { return s.err }

func permanent(err error) bool {
	var st stopped
	return errors.As(err, &st) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) || errors.Is(err, ErrAccess) ||
		errors.Is(err, ErrNoBucket) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrCorrupt) || errors.Is(err, errBadKey) || errors.Is(err, ErrConflict)
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

func (r *retrying) PutIfMatch(ctx context.Context, key string, data []byte, v ObjectVersion) (ObjectVersion, error) {
	var nv ObjectVersion
	ambiguous := false
	err := r.do(ctx, "put "+key, func() error {
		var err error
		nv, err = r.s.PutIfMatch(ctx, key, data, v)
		if err != nil && !permanent(err) {
			ambiguous = true
		}
		return err
	})
	if !ambiguous || !errors.Is(err, ErrConflict) {
		return nv, err
	}
	// An earlier attempt may have written data: is the object ours? A body
	// that differs is read again (twice): a bit flipped in transit must not
	// make our own write another's.
	for attempt := 0; attempt < 3; attempt++ {
		b, cur, rerr := r.GetVersion(ctx, key, int64(len(data)))
		switch {
		case rerr == nil && bytes.Equal(b, data):
			return cur, nil
		case rerr == nil:
			continue
		case errors.Is(rerr, ErrNotFound), errors.Is(rerr, ErrCorrupt): // gone, or longer than ours
			return "", err
		default:
			return "", fmt.Errorf("put %s: a retried conditional write met a conflict, and reading the object back to see whether the write was ours failed: %w", key, rerr)
		}
	}
	return "", err
}

func (r *retrying) GetVersion(ctx context.Context, key string, limit int64) ([]byte, ObjectVersion, error) {
	var b []byte
	var v ObjectVersion
	err := r.do(ctx, "get "+key, func() error {
		var err error
		b, v, err = r.s.GetVersion(ctx, key, limit)
		return err
	})
	return b, v, err
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

// getInto is Get into dst's array (readInto's contract): each attempt
// reads the body straight into the caller's buffer, sized for the object,
// instead of into a buffer grown from nothing and then copied (a third of
// a deep verify's reading was that growing and clearing).
func (r *retrying) getInto(ctx context.Context, key string, limit int64, dst []byte) ([]byte, error) {
	var b []byte
	err := r.do(ctx, "get "+key, func() error {
		var err error
		b, err = readInto(ctx, r.s, key, limit, dst[:0])
		return err
	})
	return b, err
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

func (r *retrying) List(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error {
	last := after
	wait := r.p.Base
	for attempt := 1; ; attempt++ {
		before := last
		err := r.s.List(ctx, prefix, last, func(oi ObjectInfo) error {
			if err := fn(oi); err != nil {
				return stopped{err}
			}
			last = oi.Key
			return nil
		})
		var st stopped
		switch {
		case err == nil:
			return nil
		case errors.As(err, &st):
			return st.err
		case permanent(err):
			return err
		}
		if last != before {
			attempt, wait = 1, r.p.Base // progress: a new run of attempts
		}
		if attempt >= r.p.Attempts {
			return fmt.Errorf("list %s (after %d attempts): %w", prefix, r.p.Attempts, err)
		}
		d := wait/2 + time.Duration(rand.Int63n(int64(wait)))
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, r.p.Max)
	}
}

func (r *retrying) Delete(ctx context.Context, key string) error {
	return r.do(ctx, "delete "+key, func() error { return r.s.Delete(ctx, key) })
}

// SweepTemp passes on to the wrapped store, if it keeps temporary files.
func (r *retrying) SweepTemp(ctx context.Context, age time.Duration) (int, error) {
	if sw, ok := r.s.(TempSweeper); ok {
		return sw.SweepTemp(ctx, age)
	}
	return 0, nil
}

func (r *retrying) String() string { return r.s.String() }
func (r *retrying) Close() error   { return r.s.Close() }
