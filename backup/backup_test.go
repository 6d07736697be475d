package backup_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

// flowDir makes n partitions and returns an open store on them.
func flowDir(t *testing.T, n int, b time.Duration) (string, *recovery.Store) {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	if err := recovery.Init(ctx, dir, n); err != nil {
		t.Fatal(err)
	}
	st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "t", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: b}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return dir, st
}

func commitKeys(t *testing.T, st *recovery.Store, e recovery.Epoch, keys []int, val string) {
	t.Helper()
	rows := make([]recovery.Row, len(keys))
	for i, k := range keys {
		var v []byte
		if val != "" {
			v = []byte(fmt.Sprintf("%s-%d-%d", val, k, e))
		}
		rows[i] = recovery.Row{Step: "t.s", Key: recovery.StateKey(fmt.Sprintf("key-%07d", k)), Epoch: e, Value: v}
	}
	ctx := context.Background()
	if err := st.Commit(ctx, 0, e+1, rows); err != nil {
		t.Fatal(err)
	}
	if err := st.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// stateAt loads the state a resume at epoch e would see from one file.
func stateAt(t *testing.T, path string, e recovery.Epoch) map[string]string {
	t.Helper()
	db, err := recovery.OpenDB(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got := map[string]string{}
	err = recovery.LoadPartition(context.Background(), db, e, func(rows []recovery.Row) error {
		for _, r := range rows {
			got[string(r.Key)] = string(r.Value)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func restoreTo(t *testing.T, s backup.Store, m *backup.Manifest) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "restored.sqlite3")
	if err := restore.FetchImage(context.Background(), s, m, path, restore.FetchOptions{}, new(atomic.Int64)); err != nil {
		t.Fatal(err)
	}
	if err := restore.IntegrityCheck(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestBackup_DeltaRestoresSameStateAndUploadsLittle(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 1, time.Hour) // no GC in the way
	commitKeys(t, st, 1, seq(0, 100000), "v")
	s := memstore.New()
	res, err := backup.BackupDir(ctx, s, dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	first := res[0]
	if first.Kind != "base" || first.ObjectsUploaded == 0 {
		t.Fatalf("first backup: %+v", first)
	}
	commitKeys(t, st, 2, seq(0, 1000), "w") // 1% of keys change
	s.ResetCalls()
	res, err = backup.BackupDir(ctx, s, dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	second := res[0]
	if second.Kind != "delta" {
		t.Fatalf("second backup is %s", second.Kind)
	}
	if second.BytesUploaded*20 > first.BytesUploaded {
		t.Fatalf("second backup uploaded %d bytes, first %d: more than 5%%", second.BytesUploaded, first.BytesUploaded)
	}
	// Two LISTs: of the (empty) quarantine prefix and of the flow's lineage
	// registry (is a newer history fencing this one?); no listing of chunks.
	if s.Calls["list"] != 2 || s.Calls["put"] > int(second.ObjectsUploaded)+3 {
		t.Fatalf("second backup made %v calls for %d new chunks", s.Calls, second.ObjectsUploaded)
	}
	path := restoreTo(t, s, second.Manifest)
	live := filepath.Join(dir, "part-0.sqlite3")
	for _, e := range []recovery.Epoch{2, 3} {
		if got, want := stateAt(t, path, e), stateAt(t, live, e); !maps.Equal(got, want) {
			t.Fatalf("state at epoch %d differs between restored delta and live partition", e)
		}
	}
	if second.Manifest.Epochs.Hi != 3 || second.Manifest.Epochs.Lo != 1 {
		t.Fatalf("range %+v", second.Manifest.Epochs)
	}
}

func TestBackup_DroppedTombstoneNotResurrectedByDelta(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 1, 0) // d = 0: GC drops tombstones as soon as durable
	commitKeys(t, st, 1, seq(0, 100), "v")
	s := memstore.New()
	if _, err := backup.BackupDir(ctx, s, dir, backup.Options{}); err != nil {
		t.Fatal(err)
	}
	commitKeys(t, st, 2, seq(0, 10), "")   // discard keys 0..9
	commitKeys(t, st, 3, seq(50, 51), "x") // something after, so GC passes epoch 2
	commitKeys(t, st, 4, nil, "")
	res, err := backup.BackupDir(ctx, s, dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Kind != "delta" {
		t.Fatalf("kind %s", res[0].Kind)
	}
	path := restoreTo(t, s, res[0].Manifest)
	got := stateAt(t, path, recovery.Epoch(res[0].Manifest.Epochs.Hi))
	if _, ok := got["key-0000003"]; ok || len(got) != 90 {
		t.Fatalf("restored %d keys (key 3 present: %v); want 90 without the discarded ones", len(got), ok)
	}
}

// failingStore fails every Put after the first n (a crash mid-upload).
type failingStore struct {
	backup.Store
	left atomic.Int64
}

func (f *failingStore) Put(ctx context.Context, key string, data []byte) error {
	if f.left.Add(-1) < 0 {
		return errors.New("injected failure")
	}
	return f.Store.Put(ctx, key, data)
}

func TestBackup_CrashMidUploadLeavesNoVisibleBackup(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 60000), strings.Repeat("z", 100)) // two chunks or more
	mem := memstore.New()
	fs := &failingStore{Store: mem}
	fs.left.Store(1)
	if _, err := backup.BackupDir(ctx, fs, dir, backup.Options{Workers: 1}); err == nil {
		t.Fatal("backup succeeded despite failures")
	}
	n := 0
	mem.List(ctx, backup.ManifestsPrefix, "", func(backup.ObjectInfo) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d manifests visible after a failed backup", n)
	}
	if _, err := mem.Stat(ctx, backup.LockKey(func() string {
		ps, _ := recovery.Find(ctx, dir, true)
		defer recovery.CloseAll(ps)
		return ps[0].FlowUID
	}(), 0)); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("lock left behind: %v", err)
	}
	res, err := backup.BackupDir(ctx, mem, dir, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	restoreTo(t, mem, res[0].Manifest)
}

func TestBackup_LockKeepsTwoAgentsApartAndExpires(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	clock := newClock(time.Now())
	l1, err := backup.AcquireLock(ctx, s, "locks/x", "a", time.Minute, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backup.AcquireLock(ctx, s, "locks/x", "b", time.Minute, clock.Now); !errors.Is(err, backup.ErrLocked) || !strings.Contains(err.Error(), "held by a") {
		t.Fatalf("second agent: %v", err)
	}
	clock.Add(2 * time.Minute)
	l2, err := backup.AcquireLock(ctx, s, "locks/x", "b", time.Minute, clock.Now)
	if err != nil {
		t.Fatalf("stale lock not taken over: %v", err)
	}
	if err := l1.Check(ctx); !errors.Is(err, backup.ErrLockLost) {
		t.Fatalf("old holder still believes it holds the lock: %v", err)
	}
	l1.Release(ctx) // must not remove b's lock
	if err := l2.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestBackupDir_EmptyAndForeignDirectories(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	if _, err := backup.BackupDir(ctx, s, t.TempDir(), backup.Options{}); !errors.Is(err, recovery.ErrNoPartitions) {
		t.Fatalf("empty dir: %v", err)
	}
	a, _ := flowDir(t, 1, 0)
	b, _ := flowDir(t, 1, 0)
	data, _ := os.ReadFile(filepath.Join(b, "part-0.sqlite3"))
	os.WriteFile(filepath.Join(a, "other.sqlite3"), data, 0o644)
	if _, err := backup.BackupDir(ctx, s, a, backup.Options{}); !errors.Is(err, recovery.ErrForeignFlow) {
		t.Fatalf("foreign partitions: %v", err)
	}
	if _, err := backup.BackupDir(ctx, s, filepath.Join(a, "nope"), backup.Options{}); err == nil {
		t.Fatal("missing dir accepted")
	}
	n := 0
	s.List(ctx, "", "", func(backup.ObjectInfo) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d objects written by refused backups", n)
	}
}
