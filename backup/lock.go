package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/flowkeep/flowkeep/internal/machine"
	"os"
	"strings"
	"sync"
	"time"
)

// ErrLocked says another agent (or a prune) holds a lock this one needs.
var ErrLocked = errors.New("locked by another agent")

// ErrLockLost says a lock was lost while its holder worked: taken over
// after it expired, or not renewed in time. The work is cancelled with it.
var ErrLockLost = errors.New("lock lost")

// PruneLockKey is the lock prune holds; backups do not start while it is
// held, and prune does not start while any partition lock is.
const PruneLockKey = LocksPrefix + "prune.json"

// Lock is a lease on a key, created only if absent (S3 If-None-Match, GCS
// DoesNotExist, a hard link on files) and expiring by itself: a lock whose
// expiry has passed is taken over, so a crashed agent never blocks backups
// for longer than the TTL. A live holder renews it (KeepAlive) and checks it
// is still its own (Check) before it publishes anything; work under a lock
// that is lost is cancelled.
type Lock struct {
	store  Store
	key    string
	holder string
	ttl    time.Duration
	now    func() time.Time

	mu   sync.Mutex
	body lockBody
}

// lockBody is a lock as stored: the holder's opaque name and its
// machine's id hash (never a host name: a bucket reader learns nothing of
// the machines), the pid, and the times.
type lockBody struct {
	Holder   string    `json:"holder"`
	Host     string    `json:"machine"`
	PID      int       `json:"pid"`
	Acquired time.Time `json:"acquired"`
	Expires  time.Time `json:"expires"`
}

// AcquireLock takes the lock at key for holder, for ttl.
func AcquireLock(ctx context.Context, s Store, key, holder string, ttl time.Duration, now func() time.Time) (*Lock, error) {
	host := machine.ID()
	t := now()
	body := lockBody{Holder: holder, Host: host, PID: os.Getpid(), Acquired: t.UTC(), Expires: t.Add(ttl).UTC()}
	data, _ := json.Marshal(body)
	l := &Lock{store: s, key: key, holder: holder, ttl: ttl, now: now, body: body}
	for attempt := 0; attempt < 3; attempt++ {
		err := s.PutIfAbsent(ctx, key, data)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, ErrExists) {
			return nil, fmt.Errorf("take lock %s: %w", key, err)
		}
		cur, rerr := readLock(ctx, s, key)
		switch {
		case errors.Is(rerr, ErrNotFound):
			// Released meanwhile, or a store that says "exists" to the
			// conditional write but "not found" to the read (an upload cut
			// off half-way): clear it and try again.
			if err := s.Delete(ctx, key); err != nil {
				return nil, fmt.Errorf("clear lock %s: %w", key, err)
			}
			continue
		case errors.Is(rerr, ErrCorrupt):
			// Not a lock body, read three times: take it over only once it
			// is older than a lock could live, as if it were one.
			oi, serr := s.Stat(ctx, key)
			if serr != nil {
				return nil, fmt.Errorf("could not read lock %s: %w", key, serr)
			}
			if t.Sub(oi.Modified) < ttl {
				return nil, fmt.Errorf("could not read lock %s (%v); it is taken over once it is %v old, at %s",
					key, rerr, ttl, oi.Modified.Add(ttl).UTC().Format(time.RFC3339))
			}
		case rerr != nil:
			return nil, fmt.Errorf("could not read lock %s: %w", key, rerr)
		case cur.Holder == holder && cur.Acquired.Equal(body.Acquired):
			// Our own create, retried after its answer was lost.
			return l, nil
		case cur.Expires.After(t) && !(cur.Host == host && !processAlive(cur.PID)):
			return nil, fmt.Errorf("%w: %s is held by %s (machine %s, pid %d) until %s",
				ErrLocked, key, cur.Holder, cur.Host, cur.PID, cur.Expires.Format(time.RFC3339))
		}
		// Expired, long unreadable, or held by a dead process of this host:
		// take it over.
		if err := s.Delete(ctx, key); err != nil {
			return nil, fmt.Errorf("remove expired lock %s: %w", key, err)
		}
	}
	return nil, fmt.Errorf("%w: could not take %s", ErrLocked, key)
}

// readLock reads a lock body, reading a body that does not parse again
// (twice) before it says ErrCorrupt.
func readLock(ctx context.Context, s Store, key string) (lockBody, error) {
	return readParsed(ctx, s, key, 64<<10, func(b []byte) (lockBody, error) {
		var body lockBody
		if err := json.Unmarshal(b, &body); err != nil || body.Holder == "" {
			return lockBody{}, fmt.Errorf("%w: lock %s is not a lock body", ErrCorrupt, key)
		}
		return body, nil
	})
}

// Check returns nil if the lock is still this holder's and unexpired. An
// unreadable lock is "could not read the lock", never "held by another".
func (l *Lock) Check(ctx context.Context) error {
	cur, err := readLock(ctx, l.store, l.key)
	if err != nil {
		return fmt.Errorf("could not read lock %s: %w", l.key, err)
	}
	l.mu.Lock()
	mine := l.body
	l.mu.Unlock()
	if cur.Holder != l.holder || !cur.Acquired.Equal(mine.Acquired) {
		return fmt.Errorf("%w: lock %s was taken over by %s (machine %s)", ErrLockLost, l.key, cur.Holder, cur.Host)
	}
	if !cur.Expires.After(l.now()) {
		return fmt.Errorf("%w: lock %s expired at %s", ErrLockLost, l.key, cur.Expires.Format(time.RFC3339))
	}
	return nil
}

// Renew extends the lock by its TTL from now, if it is still this holder's.
func (l *Lock) Renew(ctx context.Context) error {
	if err := l.Check(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	body := l.body
	body.Expires = l.now().Add(l.ttl).UTC()
	l.mu.Unlock()
	data, _ := json.Marshal(body)
	if err := l.store.Put(ctx, l.key, data); err != nil {
		return fmt.Errorf("renew lock %s: %w", l.key, err)
	}
	l.mu.Lock()
	l.body = body
	l.mu.Unlock()
	return nil
}

// Expires is when the lock runs out unless renewed.
func (l *Lock) Expires() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.body.Expires
}

// KeepAlive renews the lock every third of its TTL until stop is called.
// The returned context is cancelled, with a cause wrapping ErrLockLost,
// when the lock is taken over or could not be renewed before it would
// expire; the work under the lock must use it.
func (l *Lock) KeepAlive(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		every := l.ttl / 3
		retry := max(l.ttl/30, 100*time.Millisecond)
		next := every
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-time.After(next):
			}
			err := l.Renew(ctx)
			switch {
			case err == nil:
				next = every
			case errors.Is(err, ErrLockLost):
				cancel(err)
				return
			case l.now().Add(retry * 2).After(l.Expires()):
				// Renewals kept failing: stop before another agent could
				// rightly take the lock over.
				cancel(fmt.Errorf("%w: could not renew lock %s before it expired: %v", ErrLockLost, l.key, err))
				return
			default:
				next = retry
			}
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() { close(done) })
		wg.Wait()
		cancel(nil)
	}
}

// Release deletes the lock if it is still this holder's.
func (l *Lock) Release(ctx context.Context) error {
	cur, err := readLock(ctx, l.store, l.key)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	l.mu.Lock()
	mine := l.body
	l.mu.Unlock()
	if cur.Holder != l.holder || !cur.Acquired.Equal(mine.Acquired) {
		return nil
	}
	return l.store.Delete(ctx, l.key)
}

// checkNoPrune fails with ErrLocked while a live prune holds PruneLockKey.
// Backups call it after taking their partition lock; prune takes its lock,
// then looks for partition locks, so at least one of the two sees the
// other.
func checkNoPrune(ctx context.Context, s Store, now time.Time) error {
	cur, err := readLock(ctx, s, PruneLockKey)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("could not read the prune lock %s: %w", PruneLockKey, err)
	case cur.Expires.After(now):
		return fmt.Errorf("%w: a prune is running (%s on machine %s, until %s); the backup runs after it", ErrLocked, cur.Holder, cur.Host, cur.Expires.Format(time.RFC3339))
	}
	return nil
}

// AcquirePruneLock takes the prune lock, then makes sure no backup holds a
// partition lock (an expired one is a dead agent's and ignored).
func AcquirePruneLock(ctx context.Context, s Store, holder string, ttl time.Duration, now func() time.Time) (*Lock, error) {
	l, err := AcquireLock(ctx, s, PruneLockKey, holder, ttl, now)
	if err != nil {
		return nil, err
	}
	var busy error
	err = s.List(ctx, LocksPrefix, "", func(oi ObjectInfo) error {
		if oi.Key == PruneLockKey || !strings.HasSuffix(oi.Key, ".json") {
			return nil
		}
		cur, err := readLock(ctx, s, oi.Key)
		switch {
		case errors.Is(err, ErrNotFound):
			return nil
		case err != nil:
			busy = fmt.Errorf("could not read lock %s: %w", oi.Key, err)
		case cur.Expires.After(now()):
			busy = fmt.Errorf("%w: a backup holds %s (%s on machine %s, until %s); prune again when it is done", ErrLocked, oi.Key, cur.Holder, cur.Host, cur.Expires.Format(time.RFC3339))
		default:
			return nil
		}
		return busy
	})
	if err == nil {
		return l, nil
	}
	l.Release(context.WithoutCancel(ctx))
	if busy != nil {
		return nil, busy
	}
	return nil, fmt.Errorf("list locks: %w", err)
}
