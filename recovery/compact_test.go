package recovery

import (
	"context"
	"testing"
	"time"
)

// byHand drives a store's writers without their goroutines: a commit is
// applied, then compaction slices run exactly when the test says, so the
// state can be checked after every commit and every slice.
type byHand struct {
	t   *testing.T
	dir string
	st  *Store
	m   *flowModel
}

const handWorkers = 2

func openByHand(t *testing.T, dir string, opts Options, slice int, m *flowModel) *byHand {
	t.Helper()
	ctx := context.Background()
	st, err := Open(ctx, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	st.slice = slice
	views, err := st.Views(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := Resume(views)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.prepare(ctx, rp, handWorkers); err != nil {
		t.Fatal(err)
	}
	m.resume(rp.Epoch)
	return &byHand{t: t, dir: dir, st: st, m: m}
}

// commit is worker w's commit: each partition's writer applies it (and
// moves its commit epoch, maybe starting a compaction) before it returns.
func (h *byHand) commit(w WorkerIndex, f Epoch, rows []Row) {
	h.t.Helper()
	if err := h.st.Commit(context.Background(), w, f, rows); err != nil {
		h.t.Fatal(err)
	}
	h.m.apply(rows)
	for _, wr := range h.st.writers {
		wr.applyGroup([]submission{<-wr.ch})
	}
	if err := h.st.Err(); err != nil {
		h.t.Fatal(err)
	}
}

// slice runs one compaction slice on the partition compacting, if any.
func (h *byHand) slice() bool {
	h.t.Helper()
	for _, wr := range h.st.writers {
		if wr.job != nil {
			wr.step()
			if err := h.st.Err(); err != nil {
				h.t.Fatal(err)
			}
			return true
		}
	}
	return false
}

func (h *byHand) compacting() bool {
	for _, wr := range h.st.writers {
		if wr.job != nil {
			return true
		}
	}
	return false
}

// check: for every partition, every epoch of its restorable range, base
// and segments give the model's state.
func (h *byHand) check(what string) {
	h.t.Helper()
	for p, part := range h.st.parts {
		v := mustView(h.t, part.DB)
		checkRange(h.t, what, part.DB, h.m, PartitionIndex(p), PartitionCount(len(h.st.parts)), v.Lo(), v.Hi())
	}
}

// Compact finishes a compaction under way and then compacts up to the
// commit epoch, which may have moved on meanwhile. (It used to stop after
// the job under way: compacted_epoch stayed at the job's target.)
func TestCompact_FinishesTheJobUnderWayAndCompactsToTheCommitEpoch(t *testing.T) {
	ctx := context.Background()
	opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second}, CompactEvery: 2}
	h := openByHand(t, initDir(t, 1), opts, 1, newModel())
	row := func(e Epoch, k string) Row { return Row{"s", StateKey(k), e, []byte(k)} }
	for e := Epoch(1); e <= 3; e++ {
		h.commit(0, e+1, []Row{row(e, "a"), row(e, "b"), row(e, "c")})
		h.commit(1, e+1, nil)
	}
	if !h.compacting() || !h.slice() || !h.compacting() {
		t.Fatal("no compaction under way after one slice")
	}
	for e := Epoch(4); e <= 6; e++ {
		h.commit(0, e+1, []Row{row(e, "d")})
		h.commit(1, e+1, nil)
	}
	w := h.st.writers[0]
	target := w.job.target
	if err := w.compactAll(); err != nil {
		t.Fatal(err)
	}
	c, _ := metaEpoch(ctx, h.st.parts[0].DB, "compacted_epoch")
	if w.job != nil || c != w.commit || c <= target {
		t.Fatalf("after Compact: compacted to %d (a job from %d under way: %v), commit epoch %d", c, target, w.job != nil, w.commit)
	}
	h.check("compacted")
	h.st.Close()
}
