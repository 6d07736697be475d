package backup_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/internal/machine"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

// restoredFlow restores s's newest backups into a new directory and starts
// a run there (which adopts the restore's lineage), as a new machine would.
func restoredFlow(t *testing.T, s backup.Store) (string, *recovery.Store) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := restore.Restore(ctx, s, dir, restore.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "t", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return dir, st
}

// The old machine's agent is fenced at its first tick after the new
// machine's agent claimed the flow: it backs up nothing, says so, and both
// agents show the fork in their metrics.
func TestAgent_FencedWithinOneTickOfANewerLineage(t *testing.T) {
	ctx := context.Background()
	oldDir, oldSt := flowDir(t, 2, time.Hour)
	commitKeys(t, oldSt, 1, seq(0, 100), "old")
	s := memstore.New()
	oldAgent, _, oldLog := newAgent(t, oldDir, s)
	if _, err := oldAgent.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	t.Setenv(machine.HostEnv, "new-vm")
	newDir, newSt := restoredFlow(t, s)
	commitKeys(t, newSt, 2, seq(0, 100), "new")
	nAgent, _, _ := newAgent(t, newDir, s)
	if _, err := nAgent.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	cat, _ := backup.LoadCatalog(ctx, s, 0)
	before := len(cat.Manifests)

	commitKeys(t, oldSt, 2, seq(0, 100), "old2")
	res, err := oldAgent.RunOnce(ctx)
	if !errors.Is(err, backup.ErrFenced) {
		t.Fatalf("the old machine's agent after the new one claimed the flow: %v", err)
	}
	for _, r := range res {
		if !errors.Is(r.Err, backup.ErrFenced) || r.Manifest != nil {
			t.Fatalf("partition %d: %+v", r.Partition, r)
		}
	}
	if cat, _ := backup.LoadCatalog(ctx, s, 0); len(cat.Manifests) != before {
		t.Fatalf("a fenced agent wrote %d backups", len(cat.Manifests)-before)
	}
	if got := testutil.ToFloat64(oldAgent.Metrics.Fenced.WithLabelValues("t")); got != 1 {
		t.Fatalf("flowkeep_backup_fenced = %v", got)
	}
	if got := testutil.ToFloat64(oldAgent.Metrics.Failures.WithLabelValues("t", "0")); got != 0 {
		t.Fatalf("a fenced backup counted as a failure: %v", got)
	}
	if !strings.Contains(oldLog.String(), "FENCED") || !strings.Contains(oldLog.String(), "--take-over") {
		t.Fatalf("log:\n%s", oldLog)
	}
	// The new machine's agent sees the fork at its next tick: the old
	// lineage's agent was still running after the new one claimed.
	commitKeys(t, newSt, 3, seq(0, 10), "new3")
	if _, err := nAgent.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(nAgent.Metrics.Fork.WithLabelValues("t")); got != 1 {
		t.Fatalf("the new agent's flowkeep_backup_fork = %v", got)
	}
	if got := testutil.ToFloat64(nAgent.Metrics.Fenced.WithLabelValues("t")); got != 0 {
		t.Fatalf("the new agent is fenced")
	}
	// --take-over: the old machine's agent claims the flow at its first
	// run, and the new one is fenced from then on.
	takeOver, _, _ := newAgent(t, oldDir, s)
	takeOver.Options.TakeOver = true
	if _, err := takeOver.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	commitKeys(t, newSt, 4, seq(0, 10), "new4")
	if _, err := nAgent.RunOnce(ctx); !errors.Is(err, backup.ErrFenced) {
		t.Fatalf("the new machine's agent after the old one took over: %v", err)
	}
}

// A restored directory that no run has adopted yet has nothing new to
// back up: it is skipped, and claims nothing.
func TestBackup_RestoredAndNotRunIsSkipped(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 50), "v")
	s := memstore.New()
	if _, err := backup.BackupDir(ctx, s, dir, backup.Options{}); err != nil {
		t.Fatal(err)
	}
	restored := t.TempDir()
	if _, err := restore.Restore(ctx, s, restored, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	res, err := backup.BackupDir(ctx, s, restored, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Skipped != backup.SkipRestored {
			t.Fatalf("partition %d: %+v", r.Partition, r)
		}
	}
	reg, _ := backup.LoadRegistry(ctx, s, mustUID(t, dir))
	if ids := reg.IDs(); len(ids) != 1 {
		t.Fatalf("the registry knows lineages %v, want the original one only", ids)
	}
}

func mustUID(t *testing.T, dir string) string {
	t.Helper()
	ps, err := recovery.Find(context.Background(), dir, true)
	if err != nil || len(ps) == 0 {
		t.Fatal(err)
	}
	defer recovery.CloseAll(ps)
	return ps[0].FlowUID
}
