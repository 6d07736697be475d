package recovery

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
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

// Compaction runs in slices between commits (here 3 keys a slice, every 2
// epochs, d = 2, two workers, two partitions): after every commit and
// every slice, base and segments give, for every epoch of the restorable
// range, the state an in-memory model of the flow gives. Crashes mid-way
// (the files as they are between two transactions) and a store closed
// mid-way resume at the right epoch with its state, start the compaction
// again, and lose nothing.
func TestCompaction_SlicesBetweenCommitsKeepEveryEpochsState(t *testing.T) {
	opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: 2 * time.Second}, CompactEvery: 2}
	const slice, epochs = 3, 36
	r := rand.New(rand.NewSource(7))
	wl := &workload{r: r, keys: 60}
	dir := initDir(t, 2)
	h := openByHand(t, dir, opts, slice, newModel())
	var crashes []*flowModel // models at each crash image, by index
	var jobCommits, jobSlices, maxCommits, maxSlices int
	reopened := false
	for e := Epoch(1); e <= epochs; e++ {
		rows := wl.epoch(e, 24)
		var mine [handWorkers][]Row
		for _, row := range rows {
			w := PartitionFor(row.Step, row.Key, handWorkers) // a key lives on one worker
			mine[w] = append(mine[w], row)
		}
		for w := range WorkerIndex(handWorkers) {
			h.commit(w, e+1, mine[w])
			h.check(fmt.Sprintf("epoch %d, worker %d committed", e, w))
			if h.compacting() {
				jobCommits++
			}
		}
		for k := r.Intn(3); k > 0 && h.slice(); k-- {
			jobSlices++
			h.check(fmt.Sprintf("epoch %d, a slice", e))
		}
		if !h.compacting() {
			maxCommits, maxSlices = max(maxCommits, jobCommits), max(maxSlices, jobSlices)
			jobCommits, jobSlices = 0, 0
		}
		if h.compacting() && jobSlices > 0 {
			switch {
			case len(crashes) < 3 && e%3 == 0:
				// A crash image: the files as they are now.
				cdir := filepath.Join(t.TempDir(), "crash")
				if err := os.Mkdir(cdir, 0o755); err != nil {
					t.Fatal(err)
				}
				for p := range 2 {
					name := fmt.Sprintf("part-%d.sqlite3", p)
					copyPartition(t, filepath.Join(dir, name), filepath.Join(cdir, name))
				}
				crashes = append(crashes, h.m.clone())
				t.Run(fmt.Sprintf("crash at epoch %d", e), func(t *testing.T) { resumeAfterCrash(t, cdir, opts, crashes[len(crashes)-1]) })
			case !reopened && e > epochs/2:
				// Closed mid-way, reopened: the compaction starts again.
				if err := h.st.Close(); err != nil {
					t.Fatal(err)
				}
				h = openByHand(t, dir, opts, slice, h.m)
				h.check(fmt.Sprintf("reopened at epoch %d", e))
				reopened = true
			}
		}
	}
	if len(crashes) < 2 || !reopened {
		t.Fatalf("%d crash images, reopened %v: the schedule did not catch compactions mid-way", len(crashes), reopened)
	}
	if maxCommits < 3 || maxSlices < 3 {
		t.Fatalf("compactions spanned at most %d commits and %d slices: not interleaved", maxCommits, maxSlices)
	}
	for h.slice() {
		h.check("the last slices")
	}
	if err := h.st.Close(); err != nil {
		t.Fatal(err)
	}
	resumeAfterCrash(t, dir, opts, h.m)
}

// resumeAfterCrash runs the store (with its goroutines) on the partitions
// in dir: it resumes at their resume epoch with its state, runs on with
// compactions, and keeps the model's state.
func resumeAfterCrash(t *testing.T, dir string, opts Options, m *flowModel) {
	t.Helper()
	ctx := context.Background()
	var hi Epoch
	for p := range 2 {
		db, err := OpenDB(filepath.Join(dir, fmt.Sprintf("part-%d.sqlite3", p)), true)
		if err != nil {
			t.Fatal(err)
		}
		v := mustView(t, db)
		checkRange(t, "crash image", db, m, PartitionIndex(p), 2, v.Lo(), v.Hi())
		if p == 0 || v.Hi() < hi {
			hi = v.Hi()
		}
		db.Close()
	}
	f := &testFlow{t: t, dir: dir, opts: opts, m: m.clone(), wl: &workload{r: rand.New(rand.NewSource(int64(hi))), keys: 60}, slice: 2}
	f.open()
	if f.next != hi {
		t.Fatalf("resumed at %d, want %d", f.next, hi)
	}
	for p, part := range f.st.parts {
		if d := diffState(partState(t, part.DB, hi), f.m.below(hi, PartitionIndex(p), 2)); d != "" {
			t.Fatalf("resumed at %d: partition %d: %s", hi, p, d)
		}
	}
	f.run(hi + 8)
	if err := f.st.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	for p, part := range f.st.parts {
		v := mustView(t, part.DB)
		if c, _ := metaEpoch(ctx, part.DB, "compacted_epoch"); c != v.CommitEpoch {
			t.Fatalf("partition %d: compacted to %d after Compact, commit epoch %d", p, c, v.CommitEpoch)
		}
		checkRange(t, "after the crash, run on", part.DB, f.m, PartitionIndex(p), 2, v.Lo(), v.Hi())
	}
	f.close()
}

// Compact finishes a compaction under way and then compacts up to the
// commit epoch, which may have moved on meanwhile. (It used to stop after
// the job under way: compacted_epoch stayed at the job's target.)
func TestCompact_FinishesTheJobUnderWayAndCompactsToTheCommitEpoch(t *testing.T) {
	ctx := context.Background()
	opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second}, CompactEvery: 2}
	h := openByHand(t, initDir(t, 1), opts, 1, newModel())
	row := func(e Epoch, k string) Row { return Row{Step: "s", Key: StateKey(k), Epoch: e, Value: []byte(k)} }
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

// The same with the writers' goroutines: loads (of every epoch of the
// range) run while the writers compact in small slices between commits,
// and always see the model's state.
func TestCompaction_LoadsWhileSlicesRun(t *testing.T) {
	opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: 2 * time.Second}, CompactEvery: 2}
	f := &testFlow{t: t, dir: initDir(t, 2), opts: opts, m: newModel(), wl: &workload{r: rand.New(rand.NewSource(3)), keys: 200}, slice: 2}
	f.open()
	for e := Epoch(1); e <= 30; e++ {
		f.run(e + 1)
		for p, part := range f.st.parts {
			v := mustView(t, part.DB)
			checkRange(t, fmt.Sprintf("after epoch %d", e), part.DB, f.m, PartitionIndex(p), 2, v.Lo(), v.Hi())
		}
	}
	f.close()
}
