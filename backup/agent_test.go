package backup_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
)

func newAgent(t *testing.T, dir string, s backup.Store) (*backup.Agent, *prometheus.Registry, *bytes.Buffer) {
	t.Helper()
	sched, err := backup.ParseSchedule("@every 1h")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	var log bytes.Buffer
	return &backup.Agent{Store: s, Dir: dir, Schedule: sched, Spec: "@every 1h", Metrics: backup.NewMetrics(reg),
		Log: slog.New(slog.NewTextHandler(&log, nil))}, reg, &log
}

// An idle flow is not backed up again on every tick: each skip is counted
// and logged, and the RPO of an unchanged partition stays low.
func TestAgent_SkipsPartitionsThatDidNotMove(t *testing.T) {
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 50), "v")
	s := memstore.New()
	a, _, log := newAgent(t, dir, s)
	ctx := context.Background()
	for run := 0; run < 3; run++ {
		res, err := a.RunOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if want := map[bool]string{true: "", false: backup.SkipUnchanged}[run == 0]; r.Skipped != want {
				t.Fatalf("run %d partition %d: skipped %q, want %q", run, r.Partition, r.Skipped, want)
			}
		}
	}
	cat, _ := backup.LoadCatalog(ctx, s, 0)
	if len(cat.Manifests) != 2 {
		t.Fatalf("%d backups of an idle flow of 2 partitions after 3 runs, want 2", len(cat.Manifests))
	}
	if got := testutil.ToFloat64(a.Metrics.Skipped.WithLabelValues("t", "0", backup.SkipUnchanged)); got != 2 {
		t.Fatalf("skipped_total{partition 0, unchanged} = %v, want 2", got)
	}
	if !strings.Contains(log.String(), "skipped: unchanged since the latest backup") {
		t.Fatalf("log:\n%s", log)
	}
	// The flow moves on: the next run backs it up.
	commitKeys(t, st, 2, seq(0, 5), "w")
	res, _ := a.RunOnce(ctx)
	if res[0].Skipped != "" && res[1].Skipped != "" {
		t.Fatalf("after a new epoch both partitions were skipped")
	}
}

// A partition another agent holds the lock of is skipped with a warning,
// not counted or logged as a failure.
func TestAgent_LockedPartitionIsSkippedNotFailed(t *testing.T) {
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 10), "v")
	s := memstore.New()
	a, _, log := newAgent(t, dir, s)
	ctx := context.Background()
	if _, err := a.RunOnce(ctx); err != nil { // learns the flow's uid into the store
		t.Fatal(err)
	}
	cat, _ := backup.LoadCatalog(ctx, s, 0)
	uid := cat.Manifests[0].Flow.UID
	if _, err := backup.AcquireLock(ctx, s, backup.LockKey(uid, 0), "another-agent", time.Hour, time.Now); err != nil {
		t.Fatal(err)
	}
	commitKeys(t, st, 2, seq(0, 10), "w")
	if _, err := a.RunOnce(ctx); err != nil {
		t.Fatalf("a locked partition made the run fail: %v", err)
	}
	if got := testutil.ToFloat64(a.Metrics.Failures.WithLabelValues("t", "0")); got != 0 {
		t.Fatalf("failures_total = %v, want 0", got)
	}
	if got := testutil.ToFloat64(a.Metrics.Skipped.WithLabelValues("t", "0", backup.SkipLocked)); got != 1 {
		t.Fatalf("skipped_total{locked} = %v, want 1", got)
	}
	if !strings.Contains(log.String(), "level=WARN msg=\"skipped: the partition is locked\"") || strings.Contains(log.String(), "level=ERROR") {
		t.Fatalf("log:\n%s", log)
	}
}

// With a retention policy the agent prunes after each run.
func TestAgent_RetentionPrunesAfterEachRun(t *testing.T) {
	dir, st := flowDir(t, 1, time.Hour)
	s := memstore.New()
	a, _, _ := newAgent(t, dir, s)
	a.Retention = &backup.PruneOptions{KeepLast: 2, Grace: backup.DefaultGrace}
	ctx := context.Background()
	for e := 1; e <= 5; e++ {
		commitKeys(t, st, recoveryEpoch(e), seq(0, 20), "v")
		if _, err := a.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cat, _ := backup.LoadCatalog(ctx, s, 0)
	if len(cat.Manifests) != 2 {
		t.Fatalf("%d backups kept, want 2", len(cat.Manifests))
	}
}

// Every counter exists, at 0, with the flow's name as a label, before the
// first backup; after it the RPO and the last attempt are there.
func TestMetrics_StartAtZeroWithTheFlowLabel(t *testing.T) {
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 10), "v")
	a, reg, _ := newAgent(t, dir, memstore.New())
	a.Metrics.Known("t", []int{0, 1})
	for _, name := range []string{"flowkeep_backup_failures_total", "flowkeep_backup_uploaded_bytes_total", "flowkeep_backup_skipped_total"} {
		n, err := testutil.GatherAndCount(reg, name)
		if err != nil || n < 2 {
			t.Fatalf("%s: %d series before the first backup (%v)", name, n, err)
		}
	}
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	mfs, _ := reg.Gather()
	seen := map[string]bool{}
	for _, mf := range mfs {
		seen[mf.GetName()] = true
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "flowkeep_backup_schedule_exceeds_backup_interval" || mf.GetName() == "flowkeep_backup_prune_failures_total" {
				continue
			}
			flow := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "flow" {
					flow = l.GetValue()
				}
			}
			if flow != "t" {
				t.Fatalf("%s has no flow label", mf.GetName())
			}
		}
	}
	for _, name := range backup.MetricNames {
		if !seen[name] {
			t.Errorf("metric %s was not exported", name)
		}
	}
	for _, mf := range mfs {
		if mf.GetName() != "flowkeep_backup_rpo_seconds" {
			continue
		}
		if len(mf.GetMetric()) != 2 {
			t.Fatalf("rpo for %d partitions, want 2", len(mf.GetMetric()))
		}
		for _, m := range mf.GetMetric() {
			if rpo := m.GetGauge().GetValue(); rpo < 0 || rpo > 3600 {
				t.Fatalf("rpo = %v s", rpo)
			}
		}
	}
}

func recoveryEpoch(e int) recovery.Epoch { return recovery.Epoch(e) }
