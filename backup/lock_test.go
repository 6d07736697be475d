package backup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/file"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

type racer struct{}

// as marks ctx as a racer's, for scripts that stall one of two.
func as(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, racer{}, name)
}

func who(ctx context.Context) string { s, _ := ctx.Value(racer{}).(string); return s }

// The first write of a lock is done but its answer lost; the retry finds the
// lock there. It is this holder's own, taken.
func TestLock_CreateWhoseAnswerWasLostIsOurs(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	sc := newScripted(mem)
	sc.lose = func(key string, n int) bool { return n == 0 }
	s := fastRetry(sc)
	l, err := backup.AcquireLock(ctx, s, "locks/x", "vm/26681/5eed", time.Minute, time.Now)
	if err != nil {
		t.Fatalf("own lock, its answer lost: %v", err)
	}
	if err := l.Check(ctx); err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := l.Renew(ctx); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if err := l.Check(ctx); err != nil {
		t.Fatalf("check after renewal: %v", err)
	}
}

// An expired lock is taken over, and the takeover's answer is lost: the
// retry finds this holder's lock, and takes it.
func TestLock_TakeoverWhoseAnswerWasLostIsOurs(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	past := func() time.Time { return time.Now().Add(-time.Hour) }
	if _, err := backup.AcquireLock(ctx, mem, "locks/x", "dead", time.Minute, past); err != nil {
		t.Fatal(err)
	}
	sc := newScripted(mem)
	sc.lose = func(key string, n int) bool { return true } // every write of the lock: the retry's too
	s := fastRetry(sc)
	l, err := backup.AcquireLock(ctx, s, "locks/x", "vm/26681/5eed", time.Minute, time.Now)
	if err != nil {
		t.Fatalf("takeover, its answers lost: %v", err)
	}
	sc.lose = nil
	if err := l.Check(ctx); err != nil {
		t.Fatalf("check: %v", err)
	}
}

// A renewal is done but its answer lost; the retry must not take the lock
// for another's, and the next renewal goes on from it.
func TestLock_RenewalWhoseAnswerWasLostIsOurs(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	sc := newScripted(mem)
	s := fastRetry(sc)
	l, err := backup.AcquireLock(ctx, s, "locks/x", "vm/26681/5eed", time.Minute, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 3; round++ {
		var lost atomic.Int32
		sc.lose = func(key string, n int) bool { return lost.Add(1) == 1 } // the first write of each renewal
		if err := l.Renew(ctx); err != nil {
			t.Fatalf("renewal %d, its answer lost: %v", round, err)
		}
		sc.lose = nil
		if err := l.Check(ctx); err != nil {
			t.Fatalf("check after renewal %d: %v", round, err)
		}
	}
	// Every renewal's answer lost, through all the retries: the renewal
	// fails, but as "could not renew", not as a lost lock, and the next
	// one, answered, finds its own write and goes on from it.
	sc.dropAll = true
	if err := l.Renew(ctx); err == nil || errors.Is(err, backup.ErrLockLost) {
		t.Fatalf("renewal whose answers were all lost: %v, want a transient error", err)
	}
	sc.dropAll = false
	if err := l.Renew(ctx); err != nil {
		t.Fatalf("renewal after a lost one: %v", err)
	}
	if err := l.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// A bit flipped in transit in a lock body read back is not "taken over by"
// someone with a name one bit off: the fault drill's flake (the proxy flips
// a bit in some GET bodies, and S3 reads are not checksummed).
func TestLock_FlippedInTransitIsNotATakeover(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return t0 }
	mem := memstore.New()
	sc := newScripted(mem)
	l, err := backup.AcquireLock(ctx, sc, "locks/x", "vm/26681/5eed", time.Minute, clock)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := backup.ReadAll(ctx, mem, "locks/x", 1<<20)
	// A digit of the holder's name; the tens of the acquisition's minutes.
	for _, at := range []int{bytes.Index(body, []byte("26681")), bytes.Index(body, []byte(`"acquired":"`)) + len(`"acquired":"2026-06-01T00:`)} {
		sc.reads = map[string]int{}
		sc.flip = func(key string, n int) int {
			if n == 0 {
				return at
			}
			return -1
		}
		if err := l.Check(ctx); err != nil {
			t.Fatalf("check, byte %d flipped in transit: %v", at, err)
		}
	}
}

// Another agent reads a live lock whose expiry, flipped in transit, reads
// as past (the year 2022: the '6' of 2026 flipped). It must not take it.
func TestLock_FlippedExpiryIsNotATakeover(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return t0 }
	mem := memstore.New()
	sc := newScripted(mem)
	l, err := backup.AcquireLock(ctx, sc, "locks/x", "vm/26681/5eed", time.Minute, clock)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := backup.ReadAll(ctx, mem, "locks/x", 1<<20)
	at := bytes.Index(body, []byte(`"expires":"2026`)) + len(`"expires":"2026`) - 1
	sc.flip = func(key string, n int) int {
		if n == 0 {
			return at
		}
		return -1
	}
	if _, err := backup.AcquireLock(ctx, sc, "locks/x", "other", time.Minute, clock); !errors.Is(err, backup.ErrLocked) {
		t.Fatalf("a live lock whose expiry was flipped in transit: %v, want ErrLocked", err)
	}
	if err := l.Check(ctx); err != nil {
		t.Fatalf("the holder lost its lock to a flipped read: %v", err)
	}
}

// Two agents read the same expired lock; one stalls (a pause, a slow
// network) while the other takes it over. The stalled one must not take
// it too: exactly one wins.
func TestLock_TakeoverRaceOneWins(t *testing.T) {
	for _, st := range lockStores(t) {
		t.Run(st.name, func(t *testing.T) {
			ctx := context.Background()
			s := st.open(t)
			past := func() time.Time { return time.Now().Add(-time.Hour) }
			if _, err := backup.AcquireLock(ctx, s, "locks/x", "dead", time.Minute, past); err != nil {
				t.Fatal(err)
			}
			sc := newScripted(s)
			aDone := make(chan struct{})
			sc.afterRead = func(ctx context.Context, key string) {
				if who(ctx) == "b" {
					<-aDone // b has read the expired lock; a runs first
				}
			}
			var wg sync.WaitGroup
			errs := map[string]error{}
			var mu sync.Mutex
			for _, name := range []string{"a", "b"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if name == "a" {
						time.Sleep(20 * time.Millisecond) // b reads first
						defer close(aDone)
					}
					_, err := backup.AcquireLock(as(ctx, name), sc, "locks/x", name, time.Minute, time.Now)
					mu.Lock()
					errs[name] = err
					mu.Unlock()
				}()
			}
			wg.Wait()
			if errs["a"] != nil {
				t.Fatalf("a: %v", errs["a"])
			}
			if !errors.Is(errs["b"], backup.ErrLocked) {
				t.Fatalf("b took over a lock a had just taken over: %v", errs["b"])
			}
		})
	}
}

// Two goroutines race to take over the same expired lock, many times:
// exactly one wins each time.
func TestLock_TakeoverRaceFreeForAll(t *testing.T) {
	for _, st := range lockStores(t) {
		t.Run(st.name, func(t *testing.T) {
			ctx := context.Background()
			s := st.open(t)
			for round := 0; round < 40; round++ {
				key := fmt.Sprintf("locks/r%d", round)
				past := func() time.Time { return time.Now().Add(-time.Hour) }
				if _, err := backup.AcquireLock(ctx, s, key, "dead", time.Minute, past); err != nil {
					t.Fatal(err)
				}
				var wins atomic.Int32
				var wg sync.WaitGroup
				start := make(chan struct{})
				for i := 0; i < 2; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						_, err := backup.AcquireLock(ctx, s, key, fmt.Sprintf("racer-%d", i), time.Minute, time.Now)
						switch {
						case err == nil:
							wins.Add(1)
						case !errors.Is(err, backup.ErrLocked):
							t.Errorf("racer %d: %v", i, err)
						}
					}()
				}
				close(start)
				wg.Wait()
				if wins.Load() != 1 {
					t.Fatalf("round %d: %d racers took the lock", round, wins.Load())
				}
			}
		})
	}
}

// A renewal held up in flight while the lock expires and another agent
// takes it over must not land over the new holder's lock: the late renewal
// fails as lost, and the new holder keeps the lock.
func TestLock_LateRenewalLosesToTakeover(t *testing.T) {
	for _, st := range lockStores(t) {
		t.Run(st.name, func(t *testing.T) {
			ctx := context.Background()
			s := st.open(t)
			sc := newScripted(s)
			a, err := backup.AcquireLock(ctx, sc, "locks/x", "a", time.Minute, time.Now)
			if err != nil {
				t.Fatal(err)
			}
			taken := make(chan struct{})
			sc.hold = func(ctx context.Context, key string) {
				if who(ctx) == "a" {
					<-taken
				}
			}
			renewed := make(chan error, 1)
			go func() { renewed <- a.Renew(as(ctx, "a")) }()
			time.Sleep(20 * time.Millisecond) // a's renewal is on its way
			later := func() time.Time { return time.Now().Add(2 * time.Minute) }
			b, err := backup.AcquireLock(ctx, s, "locks/x", "b", time.Minute, later)
			if err != nil {
				t.Fatalf("b takes over the expired lock: %v", err)
			}
			close(taken)
			if err := <-renewed; !errors.Is(err, backup.ErrLockLost) || !strings.Contains(err.Error(), "taken over by b") {
				t.Fatalf("a's late renewal: %v, want lost to b", err)
			}
			if err := b.Check(ctx); err != nil {
				t.Fatalf("b lost its lock to a's late renewal: %v", err)
			}
		})
	}
}

type lockStore struct {
	name string
	open func(t *testing.T) backup.Store
}

func lockStores(t *testing.T) []lockStore {
	return []lockStore{
		{"mem", func(*testing.T) backup.Store { return memstore.New() }},
		{"file", func(t *testing.T) backup.Store {
			s, err := file.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	}
}

// A bucket writer's lock that claims to be held for decades (the old
// format, with no checksum) blocks backups and prune for at most
// MaxLockTTL from when it was written, not until the date it names.
func TestLock_AForgedFarExpiryLastsAtMostMaxLockTTL(t *testing.T) {
	ctx := context.Background()
	for _, key := range []string{backup.LockKey("f00d", 0), backup.PruneLockKey} {
		s := memstore.New()
		forged := `{"holder":"mallory","machine":"m","pid":1,"acquired":"2026-01-01T00:00:00Z","expires":"2099-01-01T00:00:00Z"}`
		if err := s.Put(ctx, key, []byte(forged)); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		_, err := backup.AcquireLock(ctx, s, key, "agent", time.Minute, func() time.Time { return now })
		if !errors.Is(err, backup.ErrLocked) || strings.Contains(err.Error(), "2099") {
			t.Fatalf("%s just after the forged lock: %v; want locked, until at most %v from now", key, err, backup.MaxLockTTL)
		}
		later := now.Add(backup.MaxLockTTL + time.Minute)
		l, err := backup.AcquireLock(ctx, s, key, "agent", time.Minute, func() time.Time { return later })
		if err != nil {
			t.Fatalf("%s more than MaxLockTTL after the forged lock was written: %v", key, err)
		}
		l.Release(ctx)
	}
	// Prune's check of backups' locks and backups' check of prune's caps
	// them the same way.
	s := memstore.New()
	forged := `{"holder":"mallory","machine":"m","pid":1,"acquired":"2026-01-01T00:00:00Z","expires":"2099-01-01T00:00:00Z"}`
	s.Put(ctx, backup.LockKey("f00d", 0), []byte(forged))
	later := func() time.Time { return time.Now().Add(backup.MaxLockTTL + time.Minute) }
	l, err := backup.AcquirePruneLock(ctx, s, "prune", time.Minute, later)
	if err != nil {
		t.Fatalf("prune after a forged backup lock went stale: %v", err)
	}
	l.Release(ctx)
}

// A lock that is not a lock body (garbage, or a body whose checksum fails)
// written by a bucket writer holds up backups and prune as a lock written
// then would, for at most MaxLockTTL, never for ever; and a file:// lock
// whose mtime was set into the future holds nothing.
func TestLock_UnreadableOrFutureLocksDoNotBlockForEver(t *testing.T) {
	ctx := context.Background()
	garbage := []byte("\x00not a lock")
	badSum := []byte(`{"holder":"mallory","machine":"m","pid":1,"acquired":"2026-01-01T00:00:00Z","expires":"2026-01-01T00:01:00Z","sum":"0000000000000000"}`)
	for _, st := range lockStores(t) {
		for name, body := range map[string][]byte{"garbage": garbage, "bad checksum": badSum} {
			t.Run(st.name+"/"+name, func(t *testing.T) {
				s := st.open(t)
				part := backup.LockKey("f00d", 0)
				for _, k := range []string{part, backup.PruneLockKey} {
					if err := s.Put(ctx, k, body); err != nil {
						t.Fatal(err)
					}
				}
				now := time.Now()
				if err := backup.CheckNoPrune(ctx, s, now); !errors.Is(err, backup.ErrLocked) {
					t.Fatalf("a backup just after an unreadable prune lock was written: %v, want ErrLocked", err)
				}
				later := now.Add(backup.MaxLockTTL + time.Minute)
				if err := backup.CheckNoPrune(ctx, s, later); err != nil {
					t.Fatalf("a backup MaxLockTTL after an unreadable prune lock was written: %v", err)
				}
				s.Delete(ctx, backup.PruneLockKey)
				if _, err := backup.AcquirePruneLock(ctx, s, "prune", time.Minute, func() time.Time { return now }); !errors.Is(err, backup.ErrLocked) {
					t.Fatalf("prune just after an unreadable backup lock was written: %v, want ErrLocked", err)
				}
				l, err := backup.AcquirePruneLock(ctx, s, "prune", time.Minute, func() time.Time { return later })
				if err != nil {
					t.Fatalf("prune MaxLockTTL after an unreadable backup lock was written: %v", err)
				}
				l.Release(ctx)
			})
		}
	}
	// file://: a far expiry with an mtime in 2099 holds nothing.
	dir := t.TempDir()
	s, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	forged := `{"holder":"mallory","machine":"m","pid":1,"acquired":"2026-01-01T00:00:00Z","expires":"2099-01-01T00:00:00Z"}`
	part := backup.LockKey("f00d", 0)
	for _, k := range []string{part, backup.PruneLockKey} {
		if err := s.Put(ctx, k, []byte(forged)); err != nil {
			t.Fatal(err)
		}
		future := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
		if err := os.Chtimes(filepath.Join(dir, filepath.FromSlash(k)), future, future); err != nil {
			t.Fatal(err)
		}
	}
	if err := backup.CheckNoPrune(ctx, s, time.Now()); err != nil {
		t.Fatalf("a backup with a forged prune lock dated 2099 on disk: %v", err)
	}
	if err := s.Delete(ctx, backup.PruneLockKey); err != nil {
		t.Fatal(err)
	}
	l, err := backup.AcquirePruneLock(ctx, s, "prune", time.Minute, time.Now)
	if err != nil {
		t.Fatalf("prune with a forged backup lock dated 2099 on disk: %v", err)
	}
	l.Release(ctx)
	l, err = backup.AcquireLock(ctx, s, part, "agent", time.Minute, time.Now)
	if err != nil {
		t.Fatalf("a backup taking a partition lock forged with an mtime in 2099: %v", err)
	}
	l.Release(ctx)
}
