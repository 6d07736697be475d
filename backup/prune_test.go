package backup_test

import (
	"context"
	"fmt"
	"path/filepath"
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

// A writer with PUT rights only uploads copies of a genuine manifest dated
// far in the future. prune --keep-last 1 used to keep those and delete every
// genuine backup; now it ignores them (and says so), and keeps the newest
// genuine one, which still restores.
func TestPrune_FutureDatedManifestsDisplaceNothing(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 1, time.Hour)
	s := memstore.New()
	var genuine []*backup.Manifest
	for e := 1; e <= 6; e++ {
		commitKeys(t, st, recovery.Epoch(e), seq(0, 20), "v")
		res, err := backup.BackupDir(ctx, s, dir, backup.Options{})
		if err != nil {
			t.Fatal(err)
		}
		genuine = append(genuine, res[0].Manifest)
	}
	for i := 0; i < 3; i++ {
		m := *genuine[0]
		m.ID = fmt.Sprintf("2099010%dT000000.000Z-0000000%d", i+1, i)
		m.Epochs.Hi += 100 // and newer epochs: the newest restore would need them
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, backup.ManifestKey(m.Flow.UID, m.Partition.Index, m.ID), b); err != nil {
			t.Fatal(err)
		}
	}
	res, err := backup.Prune(ctx, s, backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Ignored) != 3 || !strings.Contains(res.Ignored[0], "in the future") {
		t.Fatalf("ignored %q", res.Ignored)
	}
	cat, _ := backup.LoadCatalog(ctx, s, 0)
	kept := map[string]bool{}
	for _, m := range cat.Manifests {
		kept[m.ID] = true
	}
	if !kept[genuine[5].ID] {
		t.Fatalf("prune deleted the newest genuine backup; kept %v", kept)
	}
	if _, err := restore.Restore(ctx, s, filepath.Join(t.TempDir(), "r"), restore.Options{}); err != nil {
		t.Fatalf("restore after prune: %v", err)
	}
}
