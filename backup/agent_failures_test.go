package backup_test

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// downStore is a destination that cannot be reached: every call fails.
type downStore struct{}

var errDown = errors.New("dial tcp 127.0.0.1:9: connection refused")

func (downStore) Put(context.Context, string, []byte) error         { return errDown }
func (downStore) PutIfAbsent(context.Context, string, []byte) error { return errDown }
func (downStore) Get(context.Context, string) (io.ReadCloser, error) {
	return nil, errDown
}
func (downStore) Stat(context.Context, string) (backup.ObjectInfo, error) {
	return backup.ObjectInfo{}, errDown
}
func (downStore) List(context.Context, string, string, func(backup.ObjectInfo) error) error {
	return errDown
}
func (downStore) Delete(context.Context, string) error { return errDown }
func (downStore) PutIfMatch(context.Context, string, []byte, backup.ObjectVersion) (backup.ObjectVersion, error) {
	return "", errDown
}
func (downStore) GetVersion(context.Context, string, int64) ([]byte, backup.ObjectVersion, error) {
	return nil, "", errDown
}
func (downStore) String() string { return "s3://down/flows" }
func (downStore) Close() error   { return nil }

// chunklessStore takes every object but chunks (a bucket policy that
// refuses them): partition backups fail, the run itself starts.
type chunklessStore struct{ backup.Store }

func (c chunklessStore) Put(ctx context.Context, key string, data []byte) error {
	if strings.HasPrefix(key, backup.ChunksPrefix) {
		return backup.ErrAccess
	}
	return c.Store.Put(ctx, key, data)
}

func (c chunklessStore) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	if strings.HasPrefix(key, backup.ChunksPrefix) {
		return backup.ErrAccess
	}
	return c.Store.PutIfAbsent(ctx, key, data)
}

// runSeries reads the agent's run-level series {flow, partition="all"}.
func runSeries(t *testing.T, m *backup.Metrics, flow string) (failures, attempt float64) {
	t.Helper()
	return testutil.ToFloat64(m.Failures.WithLabelValues(flow, backup.RunPartition)),
		testutil.ToFloat64(m.LastAttempt.WithLabelValues(flow, backup.RunPartition))
}

// A destination that cannot be reached fails every run before any
// partition is touched: each run counts as a failure and moves the last
// attempt, under partition="all" and the flow's name.
func TestAgent_UnreachableDestinationCountsEveryFailedRun(t *testing.T) {
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 10), "v")
	a, _, log := newAgent(t, dir, downStore{})
	ctx := context.Background()
	for run := 1; run <= 3; run++ {
		before := time.Now().Unix()
		if _, err := a.RunOnce(ctx); err == nil {
			t.Fatalf("run %d against a dead destination succeeded", run)
		}
		f, at := runSeries(t, a.Metrics, "t")
		if f != float64(run) || at < float64(before) {
			t.Fatalf("run %d: failures_total{all} = %v, last_attempt{all} = %v (run began at %d)", run, f, at, before)
		}
	}
	if !strings.Contains(log.String(), "backup run failed") {
		t.Fatalf("log:\n%s", log)
	}
}

// A recovery directory that cannot be read (here: gone, which reads the
// same for root) fails the run before the flow is known: the failure is counted under flow="" and partition="all"; once
// the directory reads again and the flow is known, the flow="" series are
// dropped (no stale series keeps an alert firing) and the flow's own
// run-level series start at 0.
func TestAgent_UnreadableDirectoryCountsThenGivesWayToTheFlow(t *testing.T) {
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 10), "v")
	hidden := dir + ".hidden"
	if err := os.Rename(dir, hidden); err != nil {
		t.Fatal(err)
	}
	a, reg, _ := newAgent(t, dir, memstore.New())
	ctx := context.Background()
	if _, err := a.RunOnce(ctx); err == nil {
		t.Fatal("a run over a missing recovery directory succeeded")
	}
	if f, at := runSeries(t, a.Metrics, ""); f != 1 || at == 0 {
		t.Fatalf("failures_total{flow=\"\",all} = %v, last_attempt = %v", f, at)
	}
	if err := os.Rename(hidden, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if f, at := runSeries(t, a.Metrics, "t"); f != 0 || at == 0 {
		t.Fatalf("failures_total{flow=t,all} = %v, last_attempt = %v", f, at)
	}
	if n := seriesWith(t, reg, "flow", ""); n != 0 {
		t.Fatalf("%d series of the unknown flow left after the flow became known", n)
	}
}

// A partition whose backup fails makes the run count as failed too; a
// directory that holds no partitions yet (a first boot, before flowrun
// made them) is not a failure, but the run is recorded.
func TestAgent_PartitionFailureCountsTheRunAndAnEmptyDirectoryDoesNot(t *testing.T) {
	a, _, log := newAgent(t, t.TempDir(), memstore.New())
	if _, err := a.RunOnce(context.Background()); err != nil {
		t.Fatalf("an empty directory: %v", err)
	}
	if f, at := runSeries(t, a.Metrics, ""); f != 0 || at == 0 {
		t.Fatalf("empty directory: failures_total{all} = %v, last_attempt = %v", f, at)
	}
	if !strings.Contains(log.String(), "nothing to back up yet") {
		t.Fatalf("log:\n%s", log)
	}
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 10), "v")
	b, _, _ := newAgent(t, dir, chunklessStore{memstore.New()})
	if _, err := b.RunOnce(context.Background()); err == nil {
		t.Fatal("a run whose uploads failed succeeded")
	}
	if f, _ := runSeries(t, b.Metrics, "t"); f != 1 {
		t.Fatalf("failures_total{all} = %v, want 1", f)
	}
	if f := testutil.ToFloat64(b.Metrics.Failures.WithLabelValues("t", "0")); f != 1 {
		t.Fatalf("failures_total{partition 0} = %v, want 1", f)
	}
}

func seriesWith(t *testing.T, reg *prometheus.Registry, label, value string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					n++
				}
			}
		}
	}
	return n
}
