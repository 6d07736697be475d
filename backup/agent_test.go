package backup_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
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

// The lag metrics say how far each partition's newest backup trails the
// flow's durable epoch now: zero right after a backup, growing as the flow
// moves on without one, and only for the partitions that trail.
func TestMetrics_LagBehindTheDurableEpoch(t *testing.T) {
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 10), "v")
	a, reg, _ := newAgent(t, dir, memstore.New())
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	lag := func(name string) map[string]float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "partition" {
						out[l.GetValue()] = m.GetGauge().GetValue()
					}
				}
			}
		}
		return out
	}
	if got := lag("flowkeep_backup_lag_epochs"); got["0"] != 0 || got["1"] != 0 || len(got) != 2 {
		t.Fatalf("lag right after a backup: %v, want 0 for both partitions", got)
	}
	for e := recovery.Epoch(2); e <= 4; e++ {
		time.Sleep(5 * time.Millisecond) // epochs close at distinct times
		commitKeys(t, st, e, seq(0, 10), "w")
	}
	got := lag("flowkeep_backup_lag_epochs")
	if got["0"] != 3 || got["1"] != 3 {
		t.Fatalf("lag after 3 more epochs without a backup: %v, want 3 for both partitions", got)
	}
	if secs := lag("flowkeep_backup_lag_seconds"); secs["0"] <= 0 {
		t.Fatalf("lag in seconds after 3 more epochs: %v, want > 0", secs)
	}
	// A backup of only partition 1 (e.g. partition 0's agent is behind):
	// partition 0 still trails, partition 1 does not.
	res, err := backup.BackupDir(context.Background(), a.Store, dir, backup.Options{Partitions: []int{1}})
	if err != nil {
		t.Fatal(err)
	}
	a.Metrics.Observe("t", res)
	if got := lag("flowkeep_backup_lag_epochs"); got["0"] != 3 || got["1"] != 0 {
		t.Fatalf("lag after a backup of partition 1 only: %v, want partition 0 at 3 and partition 1 at 0", got)
	}
}

// A killed agent leaves half-built delta files in its temp directory; the
// next agent removes them when it starts, and leaves alone those of
// backups still running and unnamed ones too young to be sure about.
func TestAgent_SweepsDeltaFilesAKilledBackupLeft(t *testing.T) {
	tmp := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPid := dead.Process.Pid
	files := []struct {
		name string
		age  time.Duration
		kept bool
	}{
		{fmt.Sprintf("flowkeep-delta-%d-123.sqlite3", deadPid), 0, false},
		{fmt.Sprintf("flowkeep-delta-%d-123.sqlite3-journal", deadPid), 0, false},
		{fmt.Sprintf("flowkeep-delta-%d-456.sqlite3", os.Getpid()), 0, true}, // a live backup's
		{"flowkeep-delta-789.sqlite3", 2 * time.Hour, false},                 // an older version's, stale
		{"flowkeep-delta-790.sqlite3", 0, true},                              // an older version's, maybe live
		{"unrelated.sqlite3", 0, true},
	}
	for _, f := range files {
		p := filepath.Join(tmp, f.name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-f.age)
		os.Chtimes(p, old, old)
	}
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 10), "v")
	a, _, log := newAgent(t, dir, memstore.New())
	a.Options.TempDir = tmp
	ctx, cancel := context.WithCancel(context.Background())
	a.OnRun = func([]*backup.Result, error) { cancel() }
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		_, err := os.Stat(filepath.Join(tmp, f.name))
		if kept := err == nil; kept != f.kept {
			t.Errorf("%s: kept %v, want %v", f.name, kept, f.kept)
		}
	}
	if !strings.Contains(log.String(), "removed delta files a killed backup left behind") || !strings.Contains(log.String(), "files=3") {
		t.Fatalf("log:\n%s", log)
	}
}

// RPO means one thing: for an idle, fully backed-up flow the agent's
// flowkeep_backup_rpo_seconds is 0, and verify --max-age, from the bucket
// alone (the agent's heartbeat), agrees within a tick instead of counting
// from the last epoch; once the flow changes, the metric counts from the
// oldest change not backed up.
func TestAgent_RPOOfAnIdleFlowAgreesWithVerify(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 50), "v")
	s := memstore.New()
	a, reg, _ := newAgent(t, dir, s)
	t0 := time.Now()
	clock := t0
	a.Options.Now = func() time.Time { return clock }
	a.Metrics.SetNow(func() time.Time { return clock })
	if _, err := a.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	clock = t0.Add(time.Hour) // an hour later, nothing changed
	if _, err := a.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	rpo := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		worst := -1.0
		for _, mf := range mfs {
			if mf.GetName() == "flowkeep_backup_rpo_seconds" {
				for _, m := range mf.GetMetric() {
					worst = max(worst, m.GetGauge().GetValue())
				}
			}
		}
		return worst
	}
	if got := rpo(); got != 0 {
		t.Fatalf("RPO of an idle, backed-up flow: %v, want 0", got)
	}
	rep, err := restore.Verify(ctx, s, restore.VerifyOptions{MaxAge: time.Minute, Now: func() time.Time { return clock.Add(5 * time.Second) }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != restore.StatusHealthy || rep.Flows[0].RPOSeconds > 60 {
		t.Fatalf("verify --max-age 1m an hour after the last epoch of an idle flow: %s, RPO %vs: %+v", rep.Status, rep.Flows[0].RPOSeconds, rep.Problems)
	}
	// The flow moves on: the metric counts from the oldest change not in a
	// backup.
	commitKeys(t, st, 2, seq(0, 5), "w")
	if got := rpo(); got < 3000 {
		t.Fatalf("RPO after a change an hour (by the agent's clock) old: %v", got)
	}
}
