package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
)

// t0 is when the synthetic flows of these tests started.
var t0 = time.Date(2030, 3, 1, 12, 0, 0, 0, time.UTC)

// history is a synthetic history: its lineage and when each epoch closed.
type history struct {
	l      recovery.Lineage
	closed func(e uint64) time.Time
}

// rootHistory closes epoch e at t0 + e*10s.
func rootHistory() history {
	return history{
		l:      recovery.Lineage{ID: "aaaaaaaaaaaaaaaa", Created: t0, Reason: recovery.LineageInit},
		closed: func(e uint64) time.Time { return t0.Add(time.Duration(e) * 10 * time.Second) },
	}
}

// forkOf is a history restored from h at epoch fork at time at: its epochs
// up to fork are h's, the later ones close 10s apart from at on.
func forkOf(h history, id string, fork uint64, at time.Time) history {
	l := h.l.Child(id, "new-vm", recovery.Epoch(fork), nil, h.closed(fork), at, recovery.LineageRestore)
	return history{l: l, closed: func(e uint64) time.Time {
		if e <= fork {
			return h.closed(e)
		}
		return at.Add(time.Duration(e-fork) * 10 * time.Second)
	}}
}

var manifestSeq int

// bk is a backup of partition part (of count) of history h restoring
// epochs lo..hi.
func bk(h history, part, count int, lo, hi uint64) *backup.Manifest {
	manifestSeq++
	taken := h.closed(hi).Add(time.Second)
	l := h.l
	return &backup.Manifest{
		Format: backup.ManifestFormat, ID: fmt.Sprintf("%s-%08x", taken.Format("20060102T150405.000Z"), manifestSeq), Created: taken,
		Flow: backup.FlowRef{UID: "f00df00df00df00d", Name: "wc"}, Partition: backup.PartitionRef{Index: part, Count: count},
		Epochs:  backup.EpochRange{Lo: lo, Hi: hi, LoTime: h.closed(lo), HiTime: h.closed(hi)},
		Lineage: &l, Execution: 1,
	}
}

// The time planning over one history with gaps between its backups:
// which epoch a restore to a time lays down, and what it knows of it.
func TestPlanAt_OneHistory(t *testing.T) {
	h := rootHistory()
	// Partition 0 covers 1..10 and 15..20, partition 1 1..9 and 14..20:
	// they share 1..9 and 15..20; 10..14 is a gap.
	ms := []*backup.Manifest{
		bk(h, 0, 2, 1, 5), bk(h, 0, 2, 4, 10), bk(h, 0, 2, 15, 20),
		bk(h, 1, 2, 1, 6), bk(h, 1, 2, 5, 9), bk(h, 1, 2, 14, 20),
	}
	sec := time.Second
	tests := []struct {
		name    string
		at      time.Time
		known   *closedBy
		subset  bool
		epoch   uint64
		settled bool
		exact   bool
		lower   uint64
		reached uint64
	}{
		// Epoch 9 closed at exactly that time; partition 0's backup shows
		// 10 closed after it: the state at the time, exactly.
		{name: "at an epoch's close", at: h.closed(9), epoch: 9, settled: true, exact: true, reached: 9},
		{name: "a millisecond before it", at: h.closed(9).Add(-time.Millisecond), epoch: 8, lower: 6, reached: 6},
		// Between 7 and 8, in the middle of backups' ranges: the manifests
		// show 6 closed before and 9 after; the plan takes 8 unsettled (a
		// restore reads the images) and says 6 is certain.
		{name: "in the middle of a delta's range", at: h.closed(7).Add(5 * sec), epoch: 8, lower: 6, reached: 6},
		// What the images of those backups show settles it.
		{name: "settled by the images", at: h.closed(7).Add(5 * sec), known: &closedBy{lineage: h.l.ID, reached: 7, after: 8}, epoch: 7, settled: true, exact: true, reached: 7},
		{name: "images show it is older than the backups reach", at: h.closed(7).Add(5 * sec), known: &closedBy{lineage: h.l.ID, after: 4}, epoch: 3, lower: 1, reached: 1},
		{name: "images of another history do not count", at: h.closed(7).Add(5 * sec), known: &closedBy{lineage: "bbbbbbbbbbbbbbbb", reached: 2, after: 3}, epoch: 8, lower: 6, reached: 6},
		// One machine's share of a cluster cannot read every image: it
		// settles on what the manifests show, as every machine does.
		{name: "a subset settles from the manifests", at: h.closed(7).Add(5 * sec), subset: true, epoch: 6, settled: true, reached: 6},
		// In the gap: the flow had reached 10 by then, which not every
		// partition's backups cover: the newest shared epoch before it.
		{name: "in a gap between backups", at: h.closed(12).Add(sec), epoch: 9, settled: true, reached: 10},
		// Exactly at 15's close: the manifests record no close between 15
		// and 20, and a frontier can rise over several epochs at once.
		{name: "at a close with no later one recorded soon after", at: h.closed(15), epoch: 19, lower: 15, reached: 15},
		{name: "after the newest backup", at: h.closed(20).Add(time.Hour), epoch: 20, settled: true, reached: 20},
		{name: "at the oldest point", at: h.closed(1), epoch: 3, lower: 1, reached: 1},
		{name: "at the oldest point, one machine's share", at: h.closed(1), subset: true, epoch: 1, settled: true, reached: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := MakePlan(ms, PlanOptions{At: tt.at, known: tt.known, settledOnly: tt.subset})
			if err != nil {
				t.Fatal(err)
			}
			got := p.At
			if p.Epoch != tt.epoch || got.Settled != tt.settled || got.Exact != tt.exact || got.Lower != tt.lower || got.Reached != tt.reached {
				t.Fatalf("epoch %d %+v, want epoch %d settled %v exact %v lower %d reached %d", p.Epoch, *got, tt.epoch, tt.settled, tt.exact, tt.lower, tt.reached)
			}
			for i, m := range p.Chosen {
				if !m.Epochs.Contains(p.Epoch) {
					t.Fatalf("partition %d's backup %d..%d does not hold epoch %d", i, m.Epochs.Lo, m.Epochs.Hi, p.Epoch)
				}
			}
			if tt.exact && tt.known == nil && (!p.EpochTimeExact || !p.EpochTime.Equal(h.closed(p.Epoch))) {
				t.Fatalf("epoch %d closed at %v (exact %v), want %v", p.Epoch, p.EpochTime, p.EpochTimeExact, h.closed(p.Epoch))
			}
		})
	}

	// Before the oldest point: not restorable, and the message says how
	// far back the backups reach.
	_, err := MakePlan(ms, PlanOptions{At: h.closed(1).Add(-sec)})
	if !errors.Is(err, ErrNotRestorable) || !strings.Contains(err.Error(), "the oldest restorable point is epoch 1 (2030-03-01T12:00:10.000Z)") {
		t.Fatalf("before the oldest point: %v", err)
	}
	// A time and an epoch exclude each other.
	if _, err := MakePlan(ms, PlanOptions{At: h.closed(5), Epoch: 5}); err == nil {
		t.Fatal("a plan for a time and an epoch")
	}
	w, err := RestorableWindow(ms, PlanOptions{})
	if err != nil || w.From.Epoch != 1 || !w.From.Time.Equal(h.closed(1)) || w.To.Epoch != 20 || !w.To.Time.Equal(h.closed(20)) {
		t.Fatalf("window %+v (%v), want epochs 1..20", w, err)
	}
}

// Epoch numbers repeat across histories: a restore to a time before a
// fork lays down the parent history's state then (epochs the child
// replaced), one after it the child's.
func TestPlanAt_Lineages(t *testing.T) {
	root := rootHistory()
	forkAt := t0.Add(10 * time.Minute)
	child := forkOf(root, "cccccccccccccccc", 5, forkAt)
	ms := []*backup.Manifest{
		bk(root, 0, 2, 1, 5), bk(root, 0, 2, 1, 8), bk(root, 0, 2, 6, 10),
		bk(root, 1, 2, 1, 8), bk(root, 1, 2, 7, 9), bk(root, 1, 2, 7, 10),
		// The restored machine's backups: the state up to the fork is the
		// root's.
		bk(child, 0, 2, 4, 8), bk(child, 0, 2, 7, 12),
		bk(child, 1, 2, 4, 6), bk(child, 1, 2, 4, 9), bk(child, 1, 2, 8, 12),
	}
	tests := []struct {
		name    string
		at      time.Time
		lineage string
		epoch   uint64
		exact   bool
	}{
		{name: "before the fork: the parent's epoch 8", at: root.closed(8), lineage: root.l.ID, epoch: 8, exact: true},
		{name: "before the fork, at the fork epoch", at: root.closed(5), lineage: root.l.ID, epoch: 5, exact: true},
		{name: "after the fork: the child's epoch 8", at: child.closed(8), lineage: child.l.ID, epoch: 8, exact: true},
		{name: "after the fork, before its first new epoch", at: forkAt.Add(time.Second), lineage: child.l.ID, epoch: 5, exact: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := MakePlan(ms, PlanOptions{At: tt.at})
			if err != nil {
				t.Fatal(err)
			}
			if p.Epoch != tt.epoch || p.Lineage.Lineage.ID != tt.lineage || p.At.Exact != tt.exact {
				t.Fatalf("epoch %d of lineage %s (%+v), want epoch %d of %s", p.Epoch, p.Lineage.Lineage.Short(), *p.At, tt.epoch, recovery.ShortID(tt.lineage))
			}
			for i, m := range p.Chosen {
				if p.Epoch > 5 && m.LineageOf().ID != tt.lineage {
					t.Fatalf("partition %d: backup of lineage %s for epoch %d of %s", i, m.LineageOf().Short(), p.Epoch, recovery.ShortID(tt.lineage))
				}
			}
			if tt.lineage == root.l.ID && !strings.Contains(strings.Join(p.Notes, "\n"), "the current history, lineage "+child.l.Short()) {
				t.Fatalf("the plan does not say it passed over the current history: %q", p.Notes)
			}
		})
	}
	// Without a time, the restore is the child's newest state.
	p, err := MakePlan(ms, PlanOptions{})
	if err != nil || p.Epoch != 12 || p.Lineage.Lineage.ID != child.l.ID {
		t.Fatalf("newest: %v %v", p, err)
	}
}

// clockFlow is a flow whose partitions record epoch close times from a
// clock the test moves: epoch e (1-based, as f.epoch closes them) closes
// at t0 + 10s*e.
func clockFlow(t *testing.T, parts int, s *memstore.Store, backupEvery time.Duration) *flow {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	if err := recovery.Init(ctx, dir, parts); err != nil {
		t.Fatal(err)
	}
	var now atomic.Int64
	now.Store(t0.UnixMilli())
	st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "t", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: backupEvery},
		Now: func() time.Time { return time.UnixMilli(now.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f := &flow{t: t, dir: dir, st: st, s: s, e: 1, tick: func() { now.Add(10_000) }}
	t.Cleanup(func() { st.Close() })
	return f
}

// A restore to a time in the middle of a backup's range: the manifests
// bound the epoch, the images settle it, and the flow resumes at exactly
// the state it was in at that time.
func TestRestoreAt_TheImagesSettleTheEpoch(t *testing.T) {
	s := memstore.New()
	f := clockFlow(t, 2, s, time.Hour) // each backup reaches back to epoch 1
	for i := 0; i < 3; i++ {
		f.epoch(20)
	}
	f.backupAll() // epochs ..4
	for i := 0; i < 3; i++ {
		f.epoch(20)
	}
	f.backupAll() // epochs ..7

	// Frontier 5 (epoch 4 durable) was reached at 40s, 6 at 50s.
	at := t0.Add(45 * time.Second)
	plan, err := PlanFrom(context.Background(), s, PlanOptions{At: at})
	if err != nil {
		t.Fatal(err)
	}
	if plan.At.Settled || plan.Epoch != 6 || plan.At.Lower != 4 {
		t.Fatalf("from the manifests: epoch %d %+v, want at most 6, at least 4, unsettled", plan.Epoch, *plan.At)
	}
	dst := filepath.Join(t.TempDir(), "new")
	res, err := Restore(context.Background(), s, dst, Options{Plan: PlanOptions{At: at}})
	if err != nil {
		t.Fatal(err)
	}
	p := res.Plan
	if p.Epoch != 5 || !p.At.Settled || !p.At.Exact || !p.EpochTimeExact || !p.EpochTime.Equal(t0.Add(40*time.Second)) || !p.At.Next.Equal(t0.Add(50*time.Second)) {
		t.Fatalf("restored epoch %d closed at %v (exact %v), %+v; want epoch 5, closed at 40s, the next at 50s", p.Epoch, p.EpochTime, p.EpochTimeExact, *p.At)
	}
	e, got := loadDir(t, dst)
	if e != 5 || got["k7"] != "v4" || len(got) != 20 {
		t.Fatalf("resumed at %d with k7=%q (%d keys), want 5 and v4", e, got["k7"], len(got))
	}
	// Before the flow began: nothing that old.
	_, err = Restore(context.Background(), s, filepath.Join(t.TempDir(), "x"), Options{Plan: PlanOptions{At: t0.Add(-time.Second)}})
	if !errors.Is(err, ErrNotRestorable) || !strings.Contains(err.Error(), "the oldest restorable point is epoch 1") {
		t.Fatalf("a time before the flow began: %v", err)
	}
}

// backdate rewrites m's stored manifest (plaintext, unsigned) so that it
// claims its lowest epoch closed at lo: a writer's clock that was wrong,
// or a partition that closed the epoch later than another.
func backdate(t *testing.T, s *memstore.Store, m *backup.Manifest, lo time.Time) {
	t.Helper()
	key := backup.ManifestKey(m.Flow.UID, m.Partition.Index, m.ID)
	ok := s.Mutate(key, func(b []byte) []byte {
		var outer map[string]json.RawMessage
		if err := json.Unmarshal(b, &outer); err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(outer["manifest"]))
		dec.UseNumber()
		var body map[string]any
		if err := dec.Decode(&body); err != nil {
			t.Fatal(err)
		}
		body["epochs"].(map[string]any)["lo_time"] = lo
		raw, _ := json.Marshal(body)
		sum := sha256.Sum256(raw)
		outer["manifest"] = raw
		outer["sha256"], _ = json.Marshal(hex.EncodeToString(sum[:]))
		out, _ := json.Marshal(outer)
		return out
	})
	if !ok {
		t.Fatalf("no manifest at %s", key)
	}
}

// When the images show the state at the time is older than the backups
// fetched for it reach, the restore plans again with what it learned and
// fetches older backups, and says so.
func TestRestoreAt_ImagesBelowTheFetchedBackupsPlanAgain(t *testing.T) {
	s := memstore.New()
	f := clockFlow(t, 2, s, 2*time.Second) // each backup reaches back a few epochs
	for i := 0; i < 3; i++ {
		f.epoch(20)
	}
	f.backupAll() // epochs ..4
	for i := 0; i < 4; i++ {
		f.epoch(20)
	}
	newer := f.backupAll() // epochs lo..8
	// Frontier e was reached at (e-1)*10s. Restore to 5s before the newer
	// backups' lowest epoch (lo) was reached, while they claim it was 6s
	// before: fetched, they show the flow was at lo-1 then, and the
	// restore plans again for the older backups.
	lo := max(newer[0].Epochs.Lo, newer[1].Epochs.Lo)
	if lo < 5 {
		t.Fatalf("the newer backups restore %d..%d and %d..%d", newer[0].Epochs.Lo, newer[0].Epochs.Hi, newer[1].Epochs.Lo, newer[1].Epochs.Hi)
	}
	closed := func(e uint64) time.Time { return t0.Add(time.Duration(e-1) * 10 * time.Second) }
	at := closed(lo).Add(-5 * time.Second)
	for _, m := range newer {
		if m.Epochs.Lo == lo {
			backdate(t, s, m, closed(lo).Add(-6*time.Second))
		}
	}
	var notes []string
	res, err := Restore(context.Background(), s, filepath.Join(t.TempDir(), "new"), Options{Plan: PlanOptions{At: at}, Note: func(n string) { notes = append(notes, n) }})
	if err != nil {
		t.Fatal(err)
	}
	// The older backups end at epoch 4: exactly the state at the time if
	// lo is 5 (the images showed 5 closed after it), else the newest
	// state before it that they hold.
	p := res.Plan
	if p.Epoch != 4 || !p.At.Settled || p.At.Exact != (lo == 5) || !p.EpochTime.Equal(closed(4)) || p.Chosen[0].Epochs.Hi != 4 ||
		!strings.Contains(strings.Join(notes, "\n"), fmt.Sprintf("the images show the flow closed epoch %d after", lo)) {
		t.Fatalf("restored epoch %d (%+v) from %d..%d; notes %q", p.Epoch, *p.At, p.Chosen[0].Epochs.Lo, p.Chosen[0].Epochs.Hi, notes)
	}
}
