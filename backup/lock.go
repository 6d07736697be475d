package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// ErrLocked says another agent holds a partition's lock.
var ErrLocked = errors.New("locked by another agent")

// Lock is a lease on a key, created only if absent (S3 If-None-Match, GCS
// DoesNotExist, a hard link on files) and expiring by itself: a lock whose
// expiry has passed is taken over, so a crashed agent never blocks backups
// for longer than the TTL. Because a takeover can race, the holder checks
// the lock is still its own (Check) before it publishes anything.
type Lock struct {
	store  Store
	key    string
	holder string
	body   lockBody
}

type lockBody struct {
	Holder   string    `json:"holder"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Acquired time.Time `json:"acquired"`
	Expires  time.Time `json:"expires"`
}

// AcquireLock takes the lock at key for holder, for ttl.
func AcquireLock(ctx context.Context, s Store, key, holder string, ttl time.Duration, now time.Time) (*Lock, error) {
	host, _ := os.Hostname()
	body := lockBody{Holder: holder, Host: host, PID: os.Getpid(), Acquired: now.UTC(), Expires: now.Add(ttl).UTC()}
	data, _ := json.Marshal(body)
	for attempt := 0; attempt < 3; attempt++ {
		err := s.PutIfAbsent(ctx, key, data)
		if err == nil {
			return &Lock{store: s, key: key, holder: holder, body: body}, nil
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
		case rerr != nil && !errors.Is(rerr, ErrCorrupt):
			return nil, fmt.Errorf("read lock %s: %w", key, rerr)
		case rerr == nil && cur.Holder == holder && cur.Acquired.Equal(body.Acquired):
			// Our own create, retried after its answer was lost.
			return &Lock{store: s, key: key, holder: holder, body: cur}, nil
		case rerr == nil && cur.Expires.After(now) && !(cur.Host == host && !processAlive(cur.PID)):
			return nil, fmt.Errorf("%w: %s is held by %s (host %s, pid %d) until %s",
				ErrLocked, key, cur.Holder, cur.Host, cur.PID, cur.Expires.Format(time.RFC3339))
		}
		// Expired, unreadable, or held by a dead process of this host: take it over.
		if err := s.Delete(ctx, key); err != nil {
			return nil, fmt.Errorf("remove expired lock %s: %w", key, err)
		}
	}
	return nil, fmt.Errorf("%w: could not take %s", ErrLocked, key)
}

func readLock(ctx context.Context, s Store, key string) (lockBody, error) {
	b, err := ReadAll(ctx, s, key, 64<<10)
	if err != nil {
		return lockBody{}, err
	}
	var body lockBody
	if err := json.Unmarshal(b, &body); err != nil {
		return lockBody{}, fmt.Errorf("%w: lock %s: %v", ErrCorrupt, key, err)
	}
	return body, nil
}

// Check returns nil if the lock is still held by its holder and unexpired.
func (l *Lock) Check(ctx context.Context, now time.Time) error {
	cur, err := readLock(ctx, l.store, l.key)
	if err != nil {
		return fmt.Errorf("%w: lock %s lost: %v", ErrLocked, l.key, err)
	}
	if cur.Holder != l.holder || !cur.Acquired.Equal(l.body.Acquired) {
		return fmt.Errorf("%w: lock %s was taken over by %s (host %s)", ErrLocked, l.key, cur.Holder, cur.Host)
	}
	if !cur.Expires.After(now) {
		return fmt.Errorf("%w: lock %s expired at %s before the backup finished; raise the lock TTL", ErrLocked, l.key, cur.Expires.Format(time.RFC3339))
	}
	return nil
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
	if cur.Holder != l.holder || !cur.Acquired.Equal(l.body.Acquired) {
		return nil
	}
	return l.store.Delete(ctx, l.key)
}

// processAlive reports whether a process with this pid exists here.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
