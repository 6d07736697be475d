package backup_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/file"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

// lockClock is a clock shared by a store and the code under test.
func lockClock() *clock { return newClock(time.Now().UTC().Truncate(time.Second)) }

func TestParseObjectLock(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want backup.ObjectLock
		err  string
	}{
		{in: "GOVERNANCE:30d", want: backup.ObjectLock{Mode: backup.LockGovernance, Period: 30 * 24 * time.Hour}},
		{in: "compliance:2w", want: backup.ObjectLock{Mode: backup.LockCompliance, Period: 14 * 24 * time.Hour}},
		{in: " Governance:36h ", want: backup.ObjectLock{Mode: backup.LockGovernance, Period: 36 * time.Hour}},
		{in: "GOVERNANCE", err: "MODE:DURATION"},
		{in: "LEGAL:30d", err: "GOVERNANCE or COMPLIANCE"},
		{in: "COMPLIANCE:soon", err: "duration"},
		{in: "COMPLIANCE:0", err: "positive"},
		{in: "COMPLIANCE:-1d", err: "positive"},
		{in: "COMPLIANCE:36501d", err: "at most 36500d"},
	} {
		got, err := backup.ParseObjectLock(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want one saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// lockedBackup takes a backup of every partition in dir with object lock.
func lockedBackup(t *testing.T, s backup.Store, dir string, c *clock, l backup.ObjectLock) []*backup.Result {
	t.Helper()
	rs, err := backup.BackupDir(context.Background(), s, dir, backup.Options{ObjectLock: &l, Now: c.Now, SkipUnchanged: true})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// Every chunk, manifest and registry event a backup writes is locked for
// the period from the backup's start; latest pointers and locks are not
// (they are rewritten and deleted in normal work).
func TestObjectLock_LocksWhatMakesUpABackupAndNothingItRewrites(t *testing.T) {
	ctx := context.Background()
	c := lockClock()
	dir, st := flowDir(t, 2, 2*time.Second)
	commitKeys(t, st, 1, seq(0, 200), "v")
	s := memstore.New()
	s.SetClock(c.Now)
	start := c.Now()
	l := backup.ObjectLock{Mode: backup.LockCompliance, Period: 8 * 24 * time.Hour}
	lockedBackup(t, s, dir, c, l)
	seen := map[string]int{}
	err := s.List(ctx, "", "", func(oi backup.ObjectInfo) error {
		top, _, _ := strings.Cut(oi.Key, "/")
		seen[top]++
		locked := oi.Retention.Holds(start.Add(l.Period - time.Second))
		switch top {
		case "chunks", "manifests", "lineages":
			if !locked || oi.Retention.Mode != backup.LockCompliance || oi.Retention.Until.Before(start.Add(l.Period)) {
				t.Errorf("%s: lock %+v, want COMPLIANCE until at least %s", oi.Key, oi.Retention, start.Add(l.Period))
			}
		default:
			if oi.Retention.Holds(start) {
				t.Errorf("%s is locked (%+v): it is rewritten or deleted in normal work", oi.Key, oi.Retention)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, top := range []string{"chunks", "manifests", "lineages", "latest"} {
		if seen[top] == 0 {
			t.Errorf("no %s/ objects written: %v", top, seen)
		}
	}
	// The agent's own credentials (this store) cannot delete a backup.
	var chunk string
	s.List(ctx, backup.ChunksPrefix, "", func(oi backup.ObjectInfo) error { chunk = oi.Key; return errors.New("stop") })
	if err := s.Delete(ctx, chunk); !errors.Is(err, backup.ErrObjectLocked) {
		t.Fatalf("deleting a locked chunk: %v", err)
	}
}

// A chunk a later backup reuses has its lock extended to cover that
// backup, once a step (not once a backup); chunks new in a backup are
// written locked, in the same request.
func TestObjectLock_ReusedChunksAreExtendedOnlyWhenTheirLockIsTooShort(t *testing.T) {
	ctx := context.Background()
	c := lockClock()
	dir, st := flowDir(t, 1, 2*time.Second)
	commitKeys(t, st, 1, seq(0, 3000), "v") // a base of several chunks
	s := memstore.New()
	s.SetClock(c.Now)
	l := backup.ObjectLock{Mode: backup.LockGovernance, Period: 4 * 24 * time.Hour} // step: 1 day
	first := lockedBackup(t, s, dir, c, l)[0]
	base := first.Manifest.Base.Chunks
	if len(base) == 0 || s.Calls["retain"] != 0 {
		t.Fatalf("base of %d chunks, %d lock extensions; want its chunks written locked, no extension", len(base), s.Calls["retain"])
	}
	untilOf := func(h string) time.Time {
		oi, err := s.Stat(ctx, backup.ChunkKey(h))
		if err != nil {
			t.Fatal(err)
		}
		return oi.Retention.Until
	}
	step := l.Step()
	// Within the step: a delta reuses the base, and its locks still cover
	// the new backup: no request to extend them.
	c.Add(step / 2)
	commitKeys(t, st, 2, seq(0, 10), "w")
	second := lockedBackup(t, s, dir, c, l)[0]
	if second.Kind != "delta" || s.Calls["retain"] != 0 {
		t.Fatalf("second backup %s, %d lock extensions; want a delta and none", second.Kind, s.Calls["retain"])
	}
	// Past the step the base's locks end before the next backup's would:
	// each is extended once, to the new backup's end plus a step.
	c.Add(step)
	commitKeys(t, st, 3, seq(0, 10), "x")
	third := lockedBackup(t, s, dir, c, l)[0]
	distinct := map[string]bool{}
	for _, o := range base {
		distinct[o.SHA256] = true
	}
	if third.Kind != "delta" || s.Calls["retain"] != len(distinct) {
		t.Fatalf("third backup %s, %d lock extensions; want a delta and %d (each base chunk once)", third.Kind, s.Calls["retain"], len(distinct))
	}
	need := third.Manifest.Created.Add(l.Period)
	for h := range distinct {
		if u := untilOf(h); u.Before(need) {
			t.Errorf("base chunk %s locked until %s, before the backup that uses it (%s)", h[:12], u, need)
		}
	}
	// And the backup right after extends nothing again.
	c.Add(time.Minute)
	commitKeys(t, st, 4, seq(0, 10), "y")
	before := s.Calls["retain"]
	lockedBackup(t, s, dir, c, l)
	if s.Calls["retain"] != before {
		t.Fatalf("a backup a minute later made %d lock extensions, want 0", s.Calls["retain"]-before)
	}
}

// An idle partition is skipped while its newest backup's lock has room,
// and backed up again (everything locked anew) when it runs low.
func TestObjectLock_AnIdleFlowsNewestBackupStaysLocked(t *testing.T) {
	ctx := context.Background()
	c := lockClock()
	dir, st := flowDir(t, 1, 2*time.Second)
	commitKeys(t, st, 1, seq(0, 100), "v")
	s := memstore.New()
	s.SetClock(c.Now)
	l := backup.ObjectLock{Mode: backup.LockGovernance, Period: 4 * 24 * time.Hour}
	first := lockedBackup(t, s, dir, c, l)[0]
	c.Add(l.Step() / 2)
	if r := lockedBackup(t, s, dir, c, l)[0]; r.Skipped != backup.SkipUnchanged {
		t.Fatalf("idle partition with its lock in place: skipped %q, want %q", r.Skipped, backup.SkipUnchanged)
	}
	c.Add(l.Step())
	again := lockedBackup(t, s, dir, c, l)[0]
	if again.Skipped != "" || again.Manifest.ID == first.Manifest.ID {
		t.Fatalf("idle partition whose lock runs low: skipped %q; want a new backup", again.Skipped)
	}
	oi, err := s.Stat(ctx, backup.ManifestKey(again.Manifest.Flow.UID, 0, again.Manifest.ID))
	if err != nil || oi.Retention.Until.Before(c.Now().Add(l.Period-time.Minute)) {
		t.Fatalf("the new backup's lock: %+v, %v", oi.Retention, err)
	}
}

// Prune never deletes a locked backup or chunk: it keeps them, reports
// them (count, bytes, until when), and a prune after their locks end
// deletes them. The newest backup still restores throughout.
func TestObjectLock_PruneReportsLockedObjectsAndDeletesThemOnceTheLockEnds(t *testing.T) {
	ctx := context.Background()
	c := lockClock()
	dir, st := flowDir(t, 1, 2*time.Second)
	s := memstore.New()
	s.SetClock(c.Now)
	l := backup.ObjectLock{Mode: backup.LockCompliance, Period: 2 * 24 * time.Hour} // step: 12h
	var ids []string
	for e := recovery.Epoch(1); e <= 3; e++ {
		commitKeys(t, st, e, seq(0, 3000), string(rune('a'+e))) // every key changes: a new base each time
		r := lockedBackup(t, s, dir, c, l)[0]
		ids = append(ids, r.Manifest.ID)
		c.Add(time.Hour)
	}
	c.Add(2 * backup.DefaultGrace)
	opts := backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace, Now: c.Now}
	res, err := backup.Prune(ctx, s, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DeletedManifests) != 0 || res.DeletedChunks != 0 || len(res.LockedManifests) != 2 || res.KeptManifests != 3 {
		t.Fatalf("under lock: deleted %v and %d chunks, locked %v, kept %d; want nothing deleted, the 2 older backups reported locked",
			res.DeletedManifests, res.DeletedChunks, res.LockedManifests, res.KeptManifests)
	}
	if res.LockedObjects != 2 || res.LockedBytes <= 0 || res.LockedUntil.Before(c.Now()) {
		t.Fatalf("locked report: %d objects, %d bytes, until %s", res.LockedObjects, res.LockedBytes, res.LockedUntil)
	}
	// Past the manifests' locks (period) but not the chunks' (period+step).
	c.Add(l.Period - 2*time.Hour - 2*backup.DefaultGrace + time.Minute)
	res, err = backup.Prune(ctx, s, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DeletedManifests) != 2 || res.DeletedChunks != 0 || res.LockedObjects == 0 || len(res.LockedManifests) != 0 {
		t.Fatalf("manifest locks over: deleted %v and %d chunks, %d locked objects; want the 2 older backups deleted, their chunks reported locked",
			res.DeletedManifests, res.DeletedChunks, res.LockedObjects)
	}
	for _, k := range res.DeletedManifests {
		if strings.Contains(k, ids[2]) {
			t.Fatalf("deleted the newest backup %s", k)
		}
	}
	lockedChunks := res.LockedObjects
	c.Add(l.Step())
	res, err = backup.Prune(ctx, s, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.DeletedChunks != lockedChunks || res.LockedObjects != 0 {
		t.Fatalf("every lock over: deleted %d chunks, %d still locked; want the %d chunks deleted", res.DeletedChunks, res.LockedObjects, lockedChunks)
	}
	if _, err := restore.PlanFrom(ctx, s, restore.PlanOptions{}); err != nil {
		t.Fatalf("no longer restorable: %v", err)
	}
}

// A location that cannot lock objects (file://) refuses an object-locked
// backup before writing anything.
func TestObjectLock_RefusedWhereObjectsCannotBeLocked(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 1, 2*time.Second)
	commitKeys(t, st, 1, seq(0, 10), "v")
	root := t.TempDir()
	fs, err := file.New(root)
	if err != nil {
		t.Fatal(err)
	}
	l := backup.ObjectLock{Mode: backup.LockGovernance, Period: time.Hour}
	_, err = backup.BackupDir(ctx, backup.WithRetry(fs, backup.RetryPolicy{}), dir, backup.Options{ObjectLock: &l})
	if !errors.Is(err, backup.ErrNoObjectLock) || !strings.Contains(err.Error(), "file://") {
		t.Fatalf("err = %v", err)
	}
	n := 0
	fs.List(ctx, "", "", func(backup.ObjectInfo) error { n++; return nil })
	if n != 0 {
		t.Fatalf("the refused backup wrote %d objects", n)
	}
	if backup.RetainerOf(backup.WithRetry(memstore.New(), backup.RetryPolicy{})) == nil {
		t.Fatal("a retried memstore is not a Retainer")
	}
}

// A backup without --object-lock into a location whose chunks are locked
// (GCS refuses to replace a retained object) reuses a locked copy of the
// same size instead of failing.
func TestObjectLock_AnUnlockedBackupReusesLockedChunks(t *testing.T) {
	ctx := context.Background()
	c := lockClock()
	dir, st := flowDir(t, 2, 2*time.Second)
	commitKeys(t, st, 1, seq(0, 100), "v")
	s := memstore.New()
	s.SetClock(c.Now)
	lockedBackup(t, s, dir, c, backup.ObjectLock{Mode: backup.LockCompliance, Period: time.Hour})
	// Without latest pointers the next backup knows no chunk: it writes
	// every one, and meets the locked copies.
	var latest []string
	s.List(ctx, backup.LatestPrefix, "", func(oi backup.ObjectInfo) error { latest = append(latest, oi.Key); return nil })
	for _, k := range latest {
		if err := s.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := backup.BackupDir(ctx, s, dir, backup.Options{Now: c.Now})
	if err != nil {
		t.Fatalf("unlocked backup over locked chunks: %v", err)
	}
	for _, r := range rs {
		if r.Kind != "base" || r.ObjectsSkipped == 0 {
			t.Fatalf("partition %d: %s backup, %d chunks reused; want a base reusing the locked chunks", r.Partition, r.Kind, r.ObjectsSkipped)
		}
	}
}
