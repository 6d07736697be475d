package backup_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// faultyStore answers Gets (and Lists) of chosen keys with an error, and
// flips a byte in the first read of others.
type faultyStore struct {
	backup.Store
	mu      sync.Mutex
	failGet func(key string) error
	flipped map[string]bool // keys whose first read was flipped
	flip    func(key string) bool
}

func (f *faultyStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	f.mu.Lock()
	fail, flip := f.failGet, f.flip
	f.mu.Unlock()
	if fail != nil {
		if err := fail(key); err != nil {
			return nil, err
		}
	}
	rc, err := f.Store.Get(ctx, key)
	if err != nil || flip == nil || !flip(key) {
		return rc, err
	}
	f.mu.Lock()
	first := !f.flipped[key]
	if f.flipped == nil {
		f.flipped = map[string]bool{}
	}
	f.flipped[key] = true
	f.mu.Unlock()
	if !first {
		return rc, nil
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	b[len(b)/2] ^= 0x20
	return io.NopCloser(strings.NewReader(string(b))), nil
}

// GetVersion has Get's faults.
func (f *faultyStore) GetVersion(ctx context.Context, key string, limit int64) ([]byte, backup.ObjectVersion, error) {
	_, v, err := f.Store.GetVersion(ctx, key, limit)
	if err != nil {
		return nil, "", err
	}
	rc, err := f.Get(ctx, key)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	b, err := backup.ReadLimited(rc, key, limit)
	return b, v, err
}

func objectCount(t *testing.T, s backup.Store) int {
	t.Helper()
	n := 0
	if err := s.List(context.Background(), "", "", func(backup.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// A base chunk deleted from the store: the next backup must not build a
// delta on it (it would exit 0 and never restore), and a new base must not
// "reuse" it either; it is uploaded again.
func TestBackup_MissingBaseChunkIsNoticedAndHealed(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		age  time.Duration // how long after the first backup the second runs
	}{
		{"delta due", time.Minute},
		{"new base due", backup.DefaultBaseMaxAge + time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, st := flowDir(t, 1, time.Hour)
			commitKeys(t, st, 1, seq(0, 20000), "v")
			s := memstore.New()
			clk := newClock(time.Now())
			first, err := backup.BackupDir(ctx, s, dir, backup.Options{Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			lost := first[0].Manifest.Base.Chunks[0]
			s.Delete(ctx, backup.ChunkKey(lost.SHA256))
			commitKeys(t, st, 2, seq(0, 100), "w")
			clk.Add(tc.age)
			res, err := backup.BackupDir(ctx, s, dir, backup.Options{Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			r := res[0]
			if r.Kind != "base" {
				t.Fatalf("backup over a base with a missing chunk is a %s", r.Kind)
			}
			if tc.age < backup.DefaultBaseMaxAge && !strings.Contains(r.BaseNote, "missing") {
				t.Fatalf("no reason given for the new base: %q", r.BaseNote)
			}
			if _, err := s.Stat(ctx, backup.ChunkKey(r.Manifest.Base.Chunks[0].SHA256)); err != nil {
				t.Fatalf("the new base names a chunk that is not stored: %v", err)
			}
			if r.Manifest.Base.Chunks[0].SHA256 == lost.SHA256 && r.ObjectsHealed == 0 {
				t.Fatalf("missing chunk reused without upload: %+v", r)
			}
			path := restoreTo(t, s, r.Manifest)
			if got, want := stateAt(t, path, 3), stateAt(t, filepath.Join(dir, "part-0.sqlite3"), 3); !maps.Equal(got, want) {
				t.Fatal("restored state differs from the partition")
			}
		})
	}
}

// Bit rot is invisible to a size check: verify --deep finds it, quarantines
// the chunk, and the next backup heals it.
func TestBackup_BitRotFoundByDeepVerifyHealedByNextBackup(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 20000), "v")
	s := memstore.New()
	first, err := backup.BackupDir(ctx, s, dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rotten := first[0].Manifest.Base.Chunks[0].SHA256
	s.Mutate(backup.ChunkKey(rotten), func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
	rep, err := restore.Verify(ctx, s, restore.VerifyOptions{Deep: true, Quarantine: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != restore.StatusNotRestorable || !strings.Contains(fmt.Sprint(rep.Problems), "quarantined") {
		t.Fatalf("deep verify after bit rot: %s %+v", rep.Status, rep.Problems)
	}
	if _, err := s.Stat(ctx, backup.QuarantineKey(rotten)); err != nil {
		t.Fatalf("no quarantine marker: %v", err)
	}
	// The partition did not change, so the new base holds the rotten
	// chunk's content again: uploading it heals every backup naming it.
	res, err := backup.BackupDir(ctx, s, dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Kind != "base" || res[0].ObjectsHealed == 0 {
		t.Fatalf("backup after quarantine: kind %s, healed %d", res[0].Kind, res[0].ObjectsHealed)
	}
	if _, err := s.Stat(ctx, backup.QuarantineKey(rotten)); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("marker of the healed chunk still there: %v", err)
	}
	rep, err = restore.Verify(ctx, s, restore.VerifyOptions{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != restore.StatusHealthy {
		t.Fatalf("after healing: %s %+v", rep.Status, rep.Problems)
	}
}

// Prune must not delete anything when it could not read every manifest or
// latest pointer: an unread manifest could name any chunk.
func TestPrune_RefusesOnAnIncompleteView(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		fail func(key string) error
	}{
		{"manifest answers 503", func(k string) error {
			if strings.HasPrefix(k, backup.ManifestsPrefix) && strings.Contains(k, "part-0001") {
				return errors.New("503 slow down")
			}
			return nil
		}},
		{"manifest access denied", func(k string) error {
			if strings.HasPrefix(k, backup.ManifestsPrefix) {
				return fmt.Errorf("kms: %w", backup.ErrAccess)
			}
			return nil
		}},
		{"latest pointer unreadable", func(k string) error {
			if strings.HasPrefix(k, backup.LatestPrefix) {
				return errors.New("500 internal error")
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, st := flowDir(t, 2, time.Hour)
			mem := memstore.New()
			for e := recovery.Epoch(1); e <= 4; e++ {
				commitKeys(t, st, e, seq(int(e)*100, int(e)*100+3000), "v")
				if _, err := backup.BackupDir(ctx, mem, dir, backup.Options{}); err != nil {
					t.Fatal(err)
				}
			}
			before := objectCount(t, mem)
			fs := &faultyStore{Store: mem, failGet: tc.fail}
			later := func() time.Time { return time.Now().Add(48 * time.Hour) }
			_, err := backup.Prune(ctx, backup.WithRetry(fs, backup.RetryPolicy{Attempts: 2, Base: time.Millisecond}),
				backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace, Now: later})
			if !errors.Is(err, backup.ErrIncompleteView) {
				t.Fatalf("prune on an incomplete view: %v", err)
			}
			if after := objectCount(t, mem); after != before {
				t.Fatalf("prune deleted %d objects while refusing", before-after)
			}
		})
	}
}

// An object in manifests/ that is not a manifest (bit rot, or a writer with
// PUT rights dropping garbage there) does not stop retention: prune deletes
// the backups its policy lets go, deletes no chunk (the object could name
// any), and says so; once the object is gone the next prune sweeps.
func TestPrune_AGarbageManifestStopsOnlyTheChunkSweep(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 1, time.Hour)
	s := memstore.New()
	for e := recovery.Epoch(1); e <= 4; e++ {
		commitKeys(t, st, e, seq(int(e)*100, int(e)*100+3000), "v")
		if _, err := backup.BackupDir(ctx, s, dir, backup.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	count := func(prefix string) int {
		n := 0
		s.List(ctx, prefix, "", func(backup.ObjectInfo) error { n++; return nil })
		return n
	}
	var oldest string
	s.List(ctx, backup.ManifestsPrefix, "", func(oi backup.ObjectInfo) error {
		if oldest == "" {
			oldest = oi.Key
		}
		return nil
	})
	if err := s.Put(ctx, oldest, []byte("\x00garbage")); err != nil {
		t.Fatal(err)
	}
	manifests, chunks := count(backup.ManifestsPrefix), count(backup.ChunksPrefix)
	later := func() time.Time { return time.Now().Add(48 * time.Hour) }
	res, err := backup.Prune(ctx, s, backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if !res.NoChunkSweep || len(res.Unreadable) != 1 || !strings.Contains(res.Unreadable[0], oldest) {
		t.Fatalf("prune with a garbage manifest: sweep skipped %v, unreadable %q; want it named and the sweep skipped", res.NoChunkSweep, res.Unreadable)
	}
	if got := count(backup.ManifestsPrefix); got != manifests-2 || len(res.DeletedManifests) != 2 {
		t.Fatalf("prune --keep-last 1 left %d of %d manifests (deleted %q); want the 2 readable old ones deleted", got, manifests, res.DeletedManifests)
	}
	if got := count(backup.ChunksPrefix); got != chunks || res.DeletedChunks != 0 {
		t.Fatalf("prune deleted %d chunks with an unreadable manifest present", chunks-got)
	}
	if err := s.Delete(ctx, oldest); err != nil {
		t.Fatal(err)
	}
	res, err = backup.Prune(ctx, s, backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace, Now: later})
	if err != nil || res.NoChunkSweep || res.DeletedChunks == 0 {
		t.Fatalf("prune once the garbage was removed: %v, sweep skipped %v, %d chunks deleted", err, res.NoChunkSweep, res.DeletedChunks)
	}
}

// Backups and prune exclude each other: a prune does not start while a
// backup holds a partition lock, and a backup not while a prune runs.
func TestPrune_AndBackupsExcludeEachOther(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 100), "v")
	s := memstore.New()
	res, err := backup.BackupDir(ctx, s, dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := res[0].Manifest
	pl, err := backup.AcquireLock(ctx, s, backup.LockKey(m.Flow.UID, 0), "agent-x", time.Minute, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Prune(ctx, s, backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace}); !errors.Is(err, backup.ErrLocked) || !strings.Contains(err.Error(), "a backup holds") {
		t.Fatalf("prune while a backup runs: %v", err)
	}
	if _, err := s.Stat(ctx, backup.PruneLockKey); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("refused prune left its lock: %v", err)
	}
	pl.Release(ctx)
	prune, err := backup.AcquirePruneLock(ctx, s, "pruner", time.Minute, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	_, err = backup.BackupDir(ctx, s, dir, backup.Options{})
	if !errors.Is(err, backup.ErrLocked) || !strings.Contains(err.Error(), "a prune is running") {
		t.Fatalf("backup while a prune runs: %v", err)
	}
	prune.Release(ctx)
	if _, err := backup.BackupDir(ctx, s, dir, backup.Options{}); err != nil {
		t.Fatalf("backup after the prune: %v", err)
	}
	// A dead prune's lock expires.
	if _, err := backup.AcquirePruneLock(ctx, s, "dead pruner", time.Minute, func() time.Time { return time.Now().Add(-time.Hour) }); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.BackupDir(ctx, s, dir, backup.Options{}); err != nil {
		t.Fatalf("backup after a dead prune's lock expired: %v", err)
	}
}

// A holder renews its lock while it works, and the work is cancelled when
// the lock is lost.
func TestLock_RenewedWhileWorkingAndLossCancels(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	const ttl = 300 * time.Millisecond
	l, err := backup.AcquireLock(ctx, s, "locks/x", "a", ttl, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	lctx, stop := l.KeepAlive(ctx)
	time.Sleep(3 * ttl)
	if err := l.Check(ctx); err != nil || lctx.Err() != nil {
		t.Fatalf("after three TTLs of work: check %v, work %v", err, lctx.Err())
	}
	if _, err := backup.AcquireLock(ctx, s, "locks/x", "b", ttl, time.Now); !errors.Is(err, backup.ErrLocked) {
		t.Fatalf("a renewed lock was taken: %v", err)
	}
	// Another agent takes it over (as if our renewals had stopped).
	s.Put(ctx, "locks/x", []byte(`{"holder":"b","expires":"2999-01-01T00:00:00Z"}`))
	select {
	case <-lctx.Done():
		if !errors.Is(context.Cause(lctx), backup.ErrLockLost) {
			t.Fatalf("cancelled with %v", context.Cause(lctx))
		}
	case <-time.After(2 * ttl):
		t.Fatal("work goes on under a lost lock")
	}
	stop()
}

// An unreadable lock object is "could not read the lock", never "held by
// another agent".
func TestLock_UnreadableIsNotHeldByAnother(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	l, err := backup.AcquireLock(ctx, mem, "locks/x", "a", time.Minute, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultyStore{Store: mem, failGet: func(string) error { return errors.New("503 slow down") }}
	if _, err := backup.AcquireLock(ctx, fs, "locks/x", "b", time.Minute, time.Now); err == nil || errors.Is(err, backup.ErrLocked) || !strings.Contains(err.Error(), "could not read lock") {
		t.Fatalf("acquire over an unreadable lock: %v", err)
	}
	_ = l
	mem.Put(ctx, "locks/y", []byte("not json"))
	if _, err := backup.AcquireLock(ctx, mem, "locks/y", "b", time.Minute, time.Now); err == nil || errors.Is(err, backup.ErrLocked) || !strings.Contains(err.Error(), "could not read lock") {
		t.Fatalf("acquire over a garbled young lock: %v", err)
	}
	if _, err := backup.AcquireLock(ctx, mem, "locks/y", "b", time.Minute, func() time.Time { return time.Now().Add(time.Hour) }); err != nil {
		t.Fatalf("a garbled lock older than the TTL is not taken over: %v", err)
	}
}

func TestOptions_Validate(t *testing.T) {
	for _, tc := range []struct {
		o    backup.Options
		want string
	}{
		{backup.Options{BaseMaxAge: 100 * time.Hour}, "base max age"},
		{backup.Options{LockTTL: time.Second}, "lock TTL"},
		{backup.Options{Workers: -3}, "workers"},
		{backup.Options{}, ""},
		{backup.Options{BaseMaxAge: backup.MaxBaseMaxAge, LockTTL: backup.MinLockTTL}, ""},
	} {
		err := tc.o.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
	if backup.MaxBaseMaxAge >= recovery.DroppedRetention {
		t.Fatal("a base may outlive GC's memory of dropped keys")
	}
	for _, tc := range []struct {
		o    backup.PruneOptions
		want string
	}{
		{backup.PruneOptions{KeepLast: 1, Grace: 0}, "shorter than the lock TTL"},
		{backup.PruneOptions{KeepLast: 1, Grace: time.Minute, LockTTL: 2 * time.Minute}, "shorter than the lock TTL"},
		{backup.PruneOptions{KeepLast: 0, Grace: time.Hour}, "keep-last"},
		{backup.PruneOptions{KeepLast: 1, Grace: time.Hour}, ""},
	} {
		err := tc.o.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
}

// listFlaky fails a listing after every n items.
type listFlaky struct {
	backup.Store
	every int
	calls atomic.Int64
}

func (l *listFlaky) List(ctx context.Context, prefix, after string, fn func(backup.ObjectInfo) error) error {
	l.calls.Add(1)
	n := 0
	return l.Store.List(ctx, prefix, after, func(oi backup.ObjectInfo) error {
		if n == l.every {
			return errors.New("connection reset")
		}
		n++
		return fn(oi)
	})
}

// A listing that fails part-way resumes after the last key it delivered:
// every key once, in order, without holding the listing in memory.
func TestRetry_ListResumesWhereItFailed(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	for i := 0; i < 25; i++ {
		mem.Put(ctx, fmt.Sprintf("k/%02d", i), []byte("x"))
	}
	fl := &listFlaky{Store: mem, every: 4}
	s := backup.WithRetry(fl, backup.RetryPolicy{Attempts: 3, Base: time.Millisecond})
	var got []string
	if err := s.List(ctx, "k/", "", func(oi backup.ObjectInfo) error { got = append(got, oi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 25 || got[0] != "k/00" || got[24] != "k/24" {
		t.Fatalf("got %v", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("out of order or repeated: %v", got)
		}
	}
	if fl.calls.Load() < 7 {
		t.Fatalf("%d list calls: the fault did not bite", fl.calls.Load())
	}
}

// A manifest whose bytes were flipped in transit is read again, not called
// corrupt.
func TestCatalog_FlippedInTransitIsReadAgain(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 500), "v")
	mem := memstore.New()
	if _, err := backup.BackupDir(ctx, mem, dir, backup.Options{}); err != nil {
		t.Fatal(err)
	}
	fs := &faultyStore{Store: mem, flip: func(k string) bool { return strings.HasSuffix(k, ".json") }}
	cat, err := backup.LoadCatalog(ctx, fs, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(cat.Broken) != 0 || len(cat.Manifests) != 2 {
		t.Fatalf("broken %v, manifests %d", cat.Broken, len(cat.Manifests))
	}
	if len(fs.flipped) != 2 {
		t.Fatalf("flipped %v: the fault did not bite", fs.flipped)
	}
}

func TestAgent_RunOnceWithoutALogger(t *testing.T) {
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 10), "v")
	sched, _ := backup.ParseSchedule("@every 1h")
	a := &backup.Agent{Store: memstore.New(), Dir: dir, Schedule: sched, Spec: "@every 1h"}
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
}
