package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/flowkeep/flowkeep/internal/machine"
)

// ErrLocked says another agent (or a prune) holds a lock this one needs.
var ErrLocked = errors.New("locked by another agent")

// ErrLockLost says a lock was lost while its holder worked: taken over
// after it expired, or not renewed in time. The work is cancelled with it.
var ErrLockLost = errors.New("lock lost")

// PruneLockKey is the lock prune holds; backups do not start while it is
// held, and prune does not start while any partition lock is.
const PruneLockKey = LocksPrefix + "prune.json"

// Lock is a lease on a key, created only if absent and expiring by itself:
// a lock whose expiry has passed is taken over, so a crashed agent never
// blocks backups for longer than the TTL. A live holder renews it
// (KeepAlive) and checks it is still its own (Check) before it publishes
// anything; work under a lock that is lost is cancelled.
//
// Every write of a lock is a compare-and-swap (Store.PutIfMatch: S3
// If-Match on the ETag, GCS generation preconditions, a locked rename on
// files): creating it expects no object, a takeover expects exactly the
// version of the expired lock it read, and a renewal the version of the
// holder's own last write. Of two agents taking over the same expired lock
// one wins; a renewal that arrives after a takeover fails and the work is
// cancelled; and a write whose answer was lost is known for the holder's
// own when it is read back (its holder and acquisition time), not taken
// for another's.
type Lock struct {
	store  Store
	key    string
	holder string
	ttl    time.Duration
	now    func() time.Time

	mu      sync.Mutex
	body    lockBody
	version ObjectVersion // of the holder's last write
	keep    bool          // Release rewrites the lock as released instead of deleting it
}

// lockBody is a lock as stored: the holder's opaque name and its
// machine's id hash (never a host name: a bucket reader learns nothing of
// the machines), the pid, the times, and a checksum of them.
type lockBody struct {
	Holder   string    `json:"holder"`
	Host     string    `json:"machine"`
	PID      int       `json:"pid"`
	Acquired time.Time `json:"acquired"`
	Expires  time.Time `json:"expires"`
	// Sum is a checksum of the body without it (see seal): a bit flipped
	// in transit must not read as another holder, or as an expired lock.
	// Bodies written before it existed have none and are taken as read.
	Sum string `json:"sum,omitempty"`
	// Released says the holder gave the lock up (see Release): it is held
	// by nobody, whatever Expires says.
	Released bool `json:"released,omitempty"`
}

// seal encodes a lock body with its checksum.
func (b lockBody) seal() []byte {
	b.Sum = ""
	raw, _ := json.Marshal(b)
	b.Sum = lockSum(raw)
	data, _ := json.Marshal(b)
	return data
}

func lockSum(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:8])
}

// parseLock decodes a lock body and checks its checksum, if it has one.
func parseLock(key string, b []byte) (lockBody, error) {
	var body lockBody
	if err := json.Unmarshal(b, &body); err != nil || body.Holder == "" {
		return lockBody{}, fmt.Errorf("%w: lock %s is not a lock body", ErrCorrupt, key)
	}
	if sum := body.Sum; sum != "" {
		body.Sum = ""
		if raw, _ := json.Marshal(body); lockSum(raw) != sum {
			return lockBody{}, fmt.Errorf("%w: lock %s does not match its checksum", ErrCorrupt, key)
		}
	}
	return body, nil
}

// set records the holder's last write.
func (l *Lock) set(body lockBody, v ObjectVersion) {
	body.Sum = ""
	l.mu.Lock()
	l.body, l.version = body, v
	l.mu.Unlock()
}

// AcquireLock takes the lock at key for holder, for ttl.
func AcquireLock(ctx context.Context, s Store, key, holder string, ttl time.Duration, now func() time.Time) (*Lock, error) {
	host := machine.ID()
	t := now()
	body := lockBody{Holder: holder, Host: host, PID: os.Getpid(), Acquired: t.UTC(), Expires: t.Add(ttl).UTC()}
	data := body.seal()
	l := &Lock{store: s, key: key, holder: holder, ttl: ttl, now: now, body: body}
	var from ObjectVersion // what the write replaces: nothing, or the expired lock read
	missing := 0
	for attempt := 0; attempt < 3; attempt++ {
		v, err := s.PutIfMatch(ctx, key, data, from)
		if err == nil {
			l.set(body, v)
			return l, nil
		}
		if !errors.Is(err, ErrConflict) {
			return nil, fmt.Errorf("take lock %s: %w", key, err)
		}
		cur, ver, rerr := readLock(ctx, s, key)
		switch {
		case errors.Is(rerr, ErrNotFound):
			// Released meanwhile: create it. A store that says "exists" to
			// the conditional write but "not found" to the read twice (an
			// upload cut off half-way) has it cleared.
			from = ""
			if missing++; missing > 1 {
				if err := s.Delete(ctx, key); err != nil {
					return nil, fmt.Errorf("clear lock %s: %w", key, err)
				}
			}
			continue
		case errors.Is(rerr, ErrCorrupt):
			// Not a lock body, read three times: take it over only once it
			// is older than a lock could live, as if it were one.
			oi, serr := s.Stat(ctx, key)
			if serr != nil {
				return nil, fmt.Errorf("could not read lock %s: %w", key, serr)
			}
			if heldFrom(oi, t, ttl).After(t) {
				return nil, fmt.Errorf("could not read lock %s (%v); it is taken over once it is %v old, at %s",
					key, rerr, ttl, oi.Modified.Add(ttl).UTC().Format(time.RFC3339))
			}
			if ver == "" {
				// Too large to read, so no version to replace: cleared.
				if err := s.Delete(ctx, key); err != nil {
					return nil, fmt.Errorf("remove expired lock %s: %w", key, err)
				}
			}
		case rerr != nil:
			return nil, fmt.Errorf("could not read lock %s: %w", key, rerr)
		case cur.Holder == holder && cur.Acquired.Equal(body.Acquired):
			// Our own write, retried after its answer was lost.
			l.set(cur, ver)
			return l, nil
		case cur.Host == host && !processAlive(cur.PID):
			// Held by a dead process of this machine: taken over.
		default:
			until, err := heldUntil(ctx, s, key, cur, t)
			if err != nil {
				return nil, err
			}
			if until.After(t) {
				return nil, fmt.Errorf("%w: %s is held by %s (machine %s, pid %d) until %s",
					ErrLocked, key, cur.Holder, cur.Host, cur.PID, until.Format(time.RFC3339))
			}
		}
		// Expired, long unreadable, or held by a dead process of this host:
		// take it over, replacing exactly the version read (an agent that
		// took it over first has changed it, and this write fails).
		from = ver
	}
	return nil, fmt.Errorf("%w: could not take %s", ErrLocked, key)
}

// heldUntil is when the lock cur (read at key) runs out: its expiry, or,
// for one that claims to be held longer than any lock lives (MaxLockTTL;
// only a bucket writer, or a clock far ahead, writes that), MaxLockTTL
// after the store says it was last written.
func heldUntil(ctx context.Context, s Store, key string, cur lockBody, now time.Time) (time.Time, error) {
	if cur.Released {
		return time.Time{}, nil
	}
	if !cur.Expires.After(now.Add(MaxLockTTL + FutureSkew)) {
		return cur.Expires, nil
	}
	return writtenHeldUntil(ctx, s, key, now)
}

// writtenHeldUntil is how long a lock whose body cannot be believed (a far
// expiry, or no lock body at all) holds: MaxLockTTL after the store says it
// was last written. A write time more than FutureSkew in the future (a
// file:// lock whose mtime was set, or a clock far off) proves nothing and
// holds nothing: otherwise one forged lock would stop the agents for as
// long as its forger chose.
func writtenHeldUntil(ctx context.Context, s Store, key string, now time.Time) (time.Time, error) {
	oi, err := s.Stat(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("could not stat lock %s: %w", key, err)
	}
	return heldFrom(oi, now, MaxLockTTL), nil
}

// heldFrom is until when a lock object oi that cannot be believed holds,
// for hold from when the store says it was written: nothing if that write
// time is more than FutureSkew in the future (a file:// mtime set to 2099,
// or a clock far off, proves nothing).
func heldFrom(oi ObjectInfo, now time.Time, hold time.Duration) time.Time {
	if oi.Modified.After(now.Add(FutureSkew)) {
		return time.Time{}
	}
	return oi.Modified.Add(hold)
}

// lockHeldUntil reads the lock at key and says until when it holds, and by
// whom: a lock that is not a lock body (garbage, or a failed checksum, read
// three times) holds as one written then for MaxLockTTL would, never for
// ever; a missing one holds nothing.
func lockHeldUntil(ctx context.Context, s Store, key string, now time.Time) (time.Time, lockBody, error) {
	cur, _, err := readLock(ctx, s, key)
	switch {
	case errors.Is(err, ErrNotFound):
		return time.Time{}, lockBody{}, nil
	case errors.Is(err, ErrCorrupt):
		until, serr := writtenHeldUntil(ctx, s, key, now)
		if serr != nil {
			return time.Time{}, lockBody{}, serr
		}
		return until, lockBody{Holder: "an unreadable lock (" + err.Error() + ")", Host: "unknown"}, nil
	case err != nil:
		return time.Time{}, lockBody{}, fmt.Errorf("could not read lock %s: %w", key, err)
	}
	until, err := heldUntil(ctx, s, key, cur, now)
	return until, cur, err
}

// readLock reads a lock body and its version, reading a body that does not
// parse or match its checksum again (twice) before it says ErrCorrupt
// (with the version of the last read, if one was read whole).
func readLock(ctx context.Context, s Store, key string) (lockBody, ObjectVersion, error) {
	var body lockBody
	var v ObjectVersion
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var b []byte
		if b, v, err = s.GetVersion(ctx, key, 64<<10); err != nil {
			if errors.Is(err, ErrCorrupt) {
				continue
			}
			return lockBody{}, "", err
		}
		if body, err = parseLock(key, b); err == nil {
			return body, v, nil
		}
	}
	return lockBody{}, v, err
}

// Check returns nil if the lock is still this holder's and unexpired. An
// unreadable lock is "could not read the lock", never "held by another".
func (l *Lock) Check(ctx context.Context) error {
	cur, _, err := readLock(ctx, l.store, l.key)
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

// Renew extends the lock by its TTL from now, if it is still this holder's:
// a compare-and-swap from the version of the holder's last write. If the
// lock changed since, it is read: another holder's means the lock was lost
// (ErrLockLost); the holder's own is a write whose answer was lost, and the
// renewal goes on from it.
func (l *Lock) Renew(ctx context.Context) error {
	l.mu.Lock()
	mine, from := l.body, l.version
	l.mu.Unlock()
	now := l.now()
	if !mine.Expires.After(now) {
		return fmt.Errorf("%w: lock %s expired at %s", ErrLockLost, l.key, mine.Expires.Format(time.RFC3339))
	}
	body := mine
	body.Expires = now.Add(l.ttl).UTC()
	data := body.seal()
	for attempt := 0; attempt < 3; attempt++ {
		v, err := l.store.PutIfMatch(ctx, l.key, data, from)
		if err == nil {
			l.set(body, v)
			return nil
		}
		if !errors.Is(err, ErrConflict) {
			return fmt.Errorf("renew lock %s: %w", l.key, err)
		}
		cur, ver, rerr := readLock(ctx, l.store, l.key)
		switch {
		case errors.Is(rerr, ErrNotFound):
			return fmt.Errorf("%w: lock %s was removed", ErrLockLost, l.key)
		case rerr != nil:
			return fmt.Errorf("could not read lock %s: %w", l.key, rerr)
		case cur.Holder != l.holder || !cur.Acquired.Equal(mine.Acquired):
			return fmt.Errorf("%w: lock %s was taken over by %s (machine %s)", ErrLockLost, l.key, cur.Holder, cur.Host)
		}
		// Our own write whose answer was lost: this renewal, or an earlier
		// one that failed.
		l.set(cur, ver)
		if cur.Expires.Equal(body.Expires) {
			return nil
		}
		from = ver
	}
	return fmt.Errorf("renew lock %s: it changed under every attempt", l.key)
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

// Release gives the lock up if it is still this holder's: it deletes it,
// or, for a lock kept on release (keepOnRelease), rewrites it as released.
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	mine, from, keep := l.body, l.version, l.keep
	l.mu.Unlock()
	if keep {
		mine.Released, mine.Expires = true, mine.Acquired
		_, err := l.store.PutIfMatch(ctx, l.key, mine.seal(), from)
		if errors.Is(err, ErrConflict) {
			return nil // taken over (or gone): not this holder's to release
		}
		return err
	}
	cur, _, err := readLock(ctx, l.store, l.key)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	if cur.Holder != l.holder || !cur.Acquired.Equal(mine.Acquired) {
		return nil
	}
	return l.store.Delete(ctx, l.key)
}

// keepOnRelease makes Release rewrite the lock as released (and expired),
// conditionally on the holder's own last write, instead of deleting it.
// Object-locked backups release so: their agent's identity need not be
// allowed to delete, and the key never goes away (in a versioned bucket,
// which S3 Object Lock needs, a delete stacks a delete marker, which
// versitygw 1.8 then takes for an object present when the next agent
// creates the lock only if absent).
func (l *Lock) keepOnRelease() {
	l.mu.Lock()
	l.keep = true
	l.mu.Unlock()
}

// checkNoPrune fails with ErrLocked while a live prune holds PruneLockKey.
// Backups call it after taking their partition lock; prune takes its lock,
// then looks for partition locks, so at least one of the two sees the
// other.
func checkNoPrune(ctx context.Context, s Store, now time.Time) error {
	until, cur, err := lockHeldUntil(ctx, s, PruneLockKey, now)
	if err != nil {
		return fmt.Errorf("the prune lock: %w", err)
	}
	if until.After(now) {
		return fmt.Errorf("%w: a prune is running (%s on machine %s, until %s); the backup runs after it", ErrLocked, cur.Holder, cur.Host, until.Format(time.RFC3339))
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
		until, cur, err := lockHeldUntil(ctx, s, oi.Key, now())
		switch {
		case err != nil:
			busy = err
		case until.After(now()):
			busy = fmt.Errorf("%w: a backup holds %s (%s on machine %s, until %s); prune again when it is done", ErrLocked, oi.Key, cur.Holder, cur.Host, until.Format(time.RFC3339))
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
