package restore

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
)

// A backup that turns out damaged makes the restore plan again without
// it, by the same lineage registry: a retired lineage (here the newer
// one) stays passed over. (The replan used to plan without the registry,
// and restored the retired lineage's newer state.)
func TestRestore_AFallbackKeepsToTheRegistry(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	root := newFlow(t, 1, s)
	root.epoch(20)
	older := root.backupAll()[0]
	root.epoch(20)
	damaged := root.backupAll()[0]
	rootLineage := damaged.LineageOf().ID

	// A restore on another machine starts a newer lineage, which runs and
	// backs up; an operator then retires it.
	dir := filepath.Join(t.TempDir(), "restored")
	if _, err := Restore(ctx, s, dir, Options{}); err != nil {
		t.Fatal(err)
	}
	st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "t", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := st.Begin(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	child := &flow{t: t, dir: dir, st: st, s: s, e: rp.Epoch}
	t.Cleanup(func() { st.Close() })
	child.epoch(20)
	// Its backup is a base of its own (no latest pointer to build on).
	if err := s.Delete(ctx, backup.LatestKey(damaged.Flow.UID, 0)); err != nil {
		t.Fatal(err)
	}
	childBackup := child.backupAll()[0]
	childLineage := childBackup.LineageOf().ID
	if childLineage == rootLineage {
		t.Fatal("the restored partitions did not start a lineage")
	}
	if err := backup.RetireLineage(ctx, s, damaged.Flow.UID, childLineage, time.Now(), nil, nil); err != nil {
		t.Fatal(err)
	}

	// The root's newest backup is damaged in the store, in a chunk no
	// other backup names.
	shared := map[string]bool{}
	for _, m := range []*backup.Manifest{older, childBackup} {
		for _, ob := range m.Objects() {
			shared[ob.SHA256] = true
		}
	}
	hit := false
	for _, ob := range damaged.Objects() {
		if !shared[ob.SHA256] && !hit {
			hit = s.Mutate(backup.ChunkKey(ob.SHA256), func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
		}
	}
	if !hit {
		t.Fatal("the newest backup has no chunk of its own")
	}
	res, err := Restore(ctx, s, filepath.Join(t.TempDir(), "again"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The retired lineage's backup still restores the epoch it shares
	// with the current one (the fork); nothing after it.
	if got := res.Plan.Lineage.Lineage.ID; got != rootLineage || res.Plan.Epoch != damaged.Epochs.Hi {
		t.Fatalf("fell back to epoch %d of lineage %s, want epoch %d of the current lineage %s (not the retired %s's newer state); fallbacks %q",
			res.Plan.Epoch, recovery.ShortID(got), damaged.Epochs.Hi, recovery.ShortID(rootLineage), recovery.ShortID(childLineage), res.Fallbacks)
	}
}
