package backup_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowkeep/flowkeep/backup"
)

// refusing refuses every write while down is set (a copy location whose
// credentials were revoked).
type refusing struct {
	named
	down atomic.Bool
}

func (r *refusing) Put(ctx context.Context, key string, data []byte) error {
	if r.down.Load() {
		return backup.ErrAccess
	}
	return r.named.Put(ctx, key, data)
}

// The agent copies what each run made to its copy target; while copies
// fail, the failures are counted, the backups go on, and the lag counts
// from the oldest backup the copy lacks; the next copy that works catches
// up and the lag is 0 again.
func TestAgent_CopiesAfterEachRunAndSaysHowFarBehind(t *testing.T) {
	ctx := context.Background()
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 1000), "v")
	a, _, _ := newAgent(t, dir, newNamed("a"))
	b := &refusing{named: newNamed("b")}
	target := &backup.CopyTarget{Store: b}
	a.CopyTo, a.CopyMetrics = []*backup.CopyTarget{target}, backup.NewCopyMetrics(prometheus.NewRegistry())
	a.CopyMetrics.Track(target)
	if _, ok := target.Lag(time.Now()); ok {
		t.Fatal("a lag before any copy was queued")
	}
	if _, err := a.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	a.CopyNow(ctx)
	if n := len(keys(t, b, backup.ManifestsPrefix)); n != 2 {
		t.Fatalf("the copy holds %d backups after the first run, want 2", n)
	}
	if lag, ok := target.Lag(time.Now()); !ok || lag != 0 {
		t.Fatalf("lag %v (%v) after a copy that kept up", lag, ok)
	}

	b.down.Store(true)
	commitKeys(t, st, 2, seq(0, 10), "w")
	res, err := a.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.CopyNow(ctx)
	failures := a.CopyMetrics.Failures.WithLabelValues(b.String())
	if got := testutil.ToFloat64(failures); got != 1 {
		t.Fatalf("failures_total = %v after a failed copy", got)
	}
	made := res[0].Manifest.Created
	for _, r := range res {
		if r.Manifest.Created.Before(made) {
			made = r.Manifest.Created
		}
	}
	later := made.Add(time.Minute)
	if lag, _ := target.Lag(later); lag != 60 {
		t.Fatalf("lag %v a minute after the first backup the copy lacks, want 60", lag)
	}
	// An idle run retries the copy; while it still fails, the lag keeps
	// counting from the same backup.
	a.RunOnce(ctx)
	a.CopyNow(ctx)
	if got := testutil.ToFloat64(failures); got != 2 {
		t.Fatalf("failures_total = %v: the idle run did not retry", got)
	}
	if lag, _ := target.Lag(later); lag != 60 {
		t.Fatalf("lag %v after a second failed copy, want 60", lag)
	}

	b.down.Store(false)
	a.RunOnce(ctx)
	a.CopyNow(ctx)
	if n := len(keys(t, b, backup.ManifestsPrefix)); n != 4 {
		t.Fatalf("the copy holds %d backups after it caught up, want 4", n)
	}
	if lag, _ := target.Lag(later); lag != 0 {
		t.Fatalf("lag %v after the copy caught up", lag)
	}
	if testutil.ToFloat64(a.CopyMetrics.LastSuccess.WithLabelValues(b.String())) == 0 {
		t.Fatal("no last success")
	}
}
