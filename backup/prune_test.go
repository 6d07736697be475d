package backup_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

// Partition 1's only overlap with partition 0 is an old backup of
// partition 0; --keep-last 1 would delete it, but prune must not.
func TestPrune_KeepsWhatTheNewestOverlapNeeds(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 2, 2*time.Second) // d = 2 epochs of history
	s := memstore.New()
	commitKeys(t, st, 1, seq(0, 10), "v")
	ps := st.Partitions()
	old := backup.BackupPartition(ctx, s, ps[0], backup.Options{})
	if old.Err != nil {
		t.Fatal(old.Err)
	}
	for e := recovery.Epoch(2); e <= 3; e++ {
		commitKeys(t, st, e, seq(0, 10), "v")
	}
	if r := backup.BackupPartition(ctx, s, ps[1], backup.Options{}); r.Err != nil {
		t.Fatal(r.Err)
	}
	for e := recovery.Epoch(4); e <= 9; e++ {
		commitKeys(t, st, e, seq(0, 10), "v")
	}
	// A newer backup of partition 0 that no longer overlaps partition 1's.
	if r := backup.BackupPartition(ctx, s, ps[0], backup.Options{}); r.Err != nil {
		t.Fatal(r.Err)
	}
	_ = dir
	// Two grace periods from now: every unreferenced chunk is old enough.
	later := func() time.Time { return time.Now().Add(2 * backup.DefaultGrace) }
	res, err := backup.Prune(ctx, s, backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DeletedManifests) != 0 || len(res.Protected) != 1 || !strings.Contains(res.Protected[0], old.Manifest.ID) {
		t.Fatalf("deleted %v, protected %v; want the old backup %s protected", res.DeletedManifests, res.Protected, old.Manifest.ID)
	}
	if _, err := restore.PlanFrom(ctx, s, restore.PlanOptions{}); err != nil {
		t.Fatalf("no longer restorable after prune: %v", err)
	}
}
