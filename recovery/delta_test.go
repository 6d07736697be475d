package recovery

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// deltaOpts: d = 3, compaction every 2 epochs.
var deltaOpts = Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: 3 * time.Second}, CompactEvery: 2}

// layDelta restores like `flowbackup restore` does: the image copied to
// out, migrated, the delta laid over it.
func layDelta(t *testing.T, image, delta string, w Epoch, out string) {
	t.Helper()
	ctx := context.Background()
	copyPartition(t, image, out)
	db, err := OpenScratchDB(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := LayDelta(ctx, db, delta, w); err != nil {
		t.Fatalf("lay delta at %d over %s: %v", w, filepath.Base(image), err)
	}
	if err := CloseScratchDB(ctx, db); err != nil {
		t.Fatal(err)
	}
}

// WriteDelta at watermark W, laid over an image of the same partition taken
// when its frontier was at least W, gives the partition's state for every
// epoch of its restorable range, whatever ran in between: compactions that
// merged the image's segments and dropped tombstoned keys, and a run that
// resumed below the image's frontier. The restored partitions then run on:
// trimmed to each epoch of the range, they resume there with its state,
// and keep the model's state through further commits and compactions.
func TestDelta_LaidOverAnImageGivesEveryEpochsState(t *testing.T) {
	const imageAt, deltaAt = 12, 24 // epochs committed before the image, before the delta
	// Keys whose history straddles the image: written before it (in a
	// segment the image has not compacted), changed after it, and
	// compacted before the delta (so the delta holds them as base rows or
	// as dropped keys).
	fixed := map[Epoch][]Row{
		1:           {{Step: "pin", Key: "in-base", Epoch: 1, Value: []byte("base")}, {Step: "pin", Key: "dropped-from-base", Epoch: 1, Value: []byte("x")}},
		imageAt - 1: {{Step: "pin", Key: "overwritten", Epoch: imageAt - 1, Value: []byte("old")}, {Step: "pin", Key: "dropped", Epoch: imageAt - 1, Value: []byte("x")}, {Step: "pin", Key: "dropped-and-back", Epoch: imageAt - 1, Value: []byte("x")}, {Step: "pin", Key: "empty", Epoch: imageAt - 1, Value: []byte("x")}},
		imageAt + 1: {{Step: "pin", Key: "overwritten", Epoch: imageAt + 1, Value: []byte("new")}, {Step: "pin", Key: "dropped", Epoch: imageAt + 1, Value: nil}, {Step: "pin", Key: "dropped-from-base", Epoch: imageAt + 1, Value: nil}, {Step: "pin", Key: "dropped-and-back", Epoch: imageAt + 1, Value: nil}, {Step: "pin", Key: "empty", Epoch: imageAt + 1, Value: []byte{}}},
		imageAt + 3: {{Step: "pin", Key: "dropped-and-back", Epoch: imageAt + 3, Value: []byte("back")}},
	}
	tests := []struct {
		name string
		// watermark from the image's restorable range (default: its frontier)
		watermark func(lo, hi Epoch) Epoch
		// the image is a copy of the closed partition, not VACUUM INTO of the running one
		closed bool
		// a full compaction right before the delta
		compact bool
		// partition 1 lost its last commit before the image (a crash), so
		// the next run resumes below partition 0's image frontier and
		// runs those epochs again: the watermark is lowered to that resume
		lag bool
		// the restored partition's compaction point is lowered to its
		// oldest segment, as LayDelta did before it kept the delta's: the
		// next Begin must raise it again
		oldLay bool
	}{
		{name: "watermark at the image's frontier", compact: true},
		{name: "watermark at the image's frontier, automatic compactions only"},
		{name: "image of the closed partition", closed: true, compact: true},
		{name: "watermark one below the image's frontier", watermark: func(lo, hi Epoch) Epoch { return hi - 1 }, compact: true},
		{name: "watermark at the image's commit epoch", watermark: func(lo, hi Epoch) Epoch { return lo }, compact: true},
		{name: "watermark 1: the delta holds everything", watermark: func(lo, hi Epoch) Epoch { return 1 }, compact: true},
		{name: "a run resumed below the image's frontier", closed: true, lag: true, compact: true},
		{name: "laid by an older flowkeep, which lowered the compaction point", compact: true, oldLay: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f := newTestFlow(t, 2, deltaOpts, int64(i), fixed)
			f.run(imageAt + 1)
			tmp := t.TempDir()
			image := func(p int) string { return filepath.Join(tmp, fmt.Sprintf("image-%d.sqlite3", p)) }
			if tt.closed {
				f.close()
				if tt.lag {
					// Partition 1's writer never applied the last commit.
					db, err := OpenDB(f.path(1), false)
					if err != nil {
						t.Fatal(err)
					}
					for _, q := range []string{`UPDATE fronts SET frontier = ?1 WHERE frontier > ?1`, `DELETE FROM segments WHERE epoch >= ?1`} {
						if _, err := db.Exec(q, int64(imageAt)); err != nil {
							t.Fatal(err)
						}
					}
					db.Close()
				}
				for p := range 2 {
					copyPartition(t, f.path(p), image(p))
				}
				f.open()
				if tt.lag && f.next != imageAt {
					t.Fatalf("resumed at %d, want %d", f.next, imageAt)
				}
			} else {
				for p, part := range f.st.Partitions() {
					vacuumInto(t, part.DB, image(p))
				}
			}
			imgView := make([]*View, 2)
			for p := range 2 {
				db, err := OpenDB(image(p), true)
				if err != nil {
					t.Fatal(err)
				}
				imgView[p] = mustView(t, db)
				db.Close()
			}
			f.run(deltaAt)
			if tt.compact {
				if err := f.st.Compact(ctx); err != nil {
					t.Fatal(err)
				}
			}
			for p := range 2 {
				w := imgView[p].Hi()
				if tt.watermark != nil {
					w = tt.watermark(imgView[p].Lo(), imgView[p].Hi())
				}
				delta := filepath.Join(tmp, fmt.Sprintf("delta-%d.sqlite3", p))
				var live *View
				readTx(t, f.path(p), func(conn *sql.Conn) {
					live = mustView(t, conn)
					// What backup's deltaWatermark does: lower the
					// watermark to every later run's resume epoch.
					for _, ex := range live.Executions {
						if ex.Number > imgView[p].Last().Number {
							w = min(w, ex.ResumeEpoch)
						}
					}
					if _, err := WriteDelta(ctx, conn, w, delta); err != nil {
						t.Fatal(err)
					}
					checkRange(t, "live", conn, f.m, PartitionIndex(p), 2, live.Lo(), live.Hi())
				})
				if tt.compact && live.Lo() <= imgView[p].Hi() {
					t.Fatalf("partition %d: the live commit epoch %d has not passed the image's frontier %d: nothing was compacted since", p, live.Lo(), imgView[p].Hi())
				}
				out := filepath.Join(tmp, fmt.Sprintf("restored-%d.sqlite3", p))
				layDelta(t, image(p), delta, w, out)
				if tt.oldLay {
					db, err := OpenDB(out, false)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := db.Exec(`UPDATE meta SET value = (SELECT min(epoch) FROM segments) WHERE key = 'compacted_epoch' AND EXISTS (SELECT 1 FROM segments)`); err != nil {
						t.Fatal(err)
					}
					db.Close()
				}
				db, err := OpenDB(out, true)
				if err != nil {
					t.Fatal(err)
				}
				got := mustView(t, db)
				if got.Lo() != live.Lo() || got.Hi() != live.Hi() || len(got.Executions) != len(live.Executions) {
					t.Fatalf("partition %d restored: range [%d, %d], %d executions; the live one [%d, %d], %d", p, got.Lo(), got.Hi(), len(got.Executions), live.Lo(), live.Hi(), len(live.Executions))
				}
				checkRange(t, fmt.Sprintf("image at %d + delta at %d", imgView[p].Hi(), w), db, f.m, PartitionIndex(p), 2, got.Lo(), got.Hi())
				db.Close()
			}
			// The scenario did what it says: keys were dropped after the
			// image, and changes after it were compacted into the base.
			if tt.compact {
				var dropped, base int
				for p := range 2 {
					db, err := sql.Open("sqlite", filepath.Join(tmp, fmt.Sprintf("delta-%d.sqlite3", p)))
					if err != nil {
						t.Fatal(err)
					}
					var d, b int
					db.QueryRow(`SELECT (SELECT count(*) FROM dropped), (SELECT count(*) FROM base)`).Scan(&d, &b)
					db.Close()
					dropped, base = dropped+d, base+b
				}
				if dropped == 0 || base == 0 {
					t.Fatalf("the deltas hold %d dropped keys and %d base rows: the scenario compacted nothing after the image", dropped, base)
				}
			}
			f.close()
			restored := func(p int) string { return filepath.Join(tmp, fmt.Sprintf("restored-%d.sqlite3", p)) }
			runRestored(t, 2, deltaOpts, restored, f.m)
		})
	}
}

// runRestored trims copies of the n restored partitions to every epoch of
// their range, runs each on, and checks the state throughout.
func runRestored(t *testing.T, n int, opts Options, restored func(p int) string, m *flowModel) {
	t.Helper()
	ctx := context.Background()
	var lo, hi Epoch
	var last ExecutionNumber
	for p := range n {
		db, err := OpenDB(restored(p), true)
		if err != nil {
			t.Fatal(err)
		}
		v := mustView(t, db)
		db.Close()
		lo, hi, last = max(lo, v.Lo()), max(hi, v.Hi()), max(last, v.Last().Number)
	}
	for e := lo; e <= hi; e++ {
		dir := t.TempDir()
		for p := range n {
			path := filepath.Join(dir, fmt.Sprintf("part-%d.sqlite3", p))
			copyPartition(t, restored(p), path)
			db, err := OpenDB(path, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := Trim(ctx, db, e, last+1, time.Now()); err != nil {
				t.Fatalf("trim partition %d to %d: %v", p, e, err)
			}
			db.Close()
		}
		f := &testFlow{t: t, dir: dir, m: m.clone(), wl: &workload{r: rand.New(rand.NewSource(int64(e))), keys: 40}, opts: opts}
		f.open()
		if f.next != e {
			t.Fatalf("trimmed to %d, resumed at %d", e, f.next)
		}
		for p, part := range f.st.Partitions() {
			if d := diffState(partState(t, part.DB, e), f.m.below(e, PartitionIndex(p), PartitionCount(n))); d != "" {
				t.Fatalf("restored, trimmed to %d: partition %d: %s", e, p, d)
			}
		}
		if d := diffState(readOnDemand(t, f.st, e, f.m), f.m.below(e, 0, 0)); d != "" {
			t.Fatalf("restored, trimmed to %d, read on demand: %s", e, d)
		}
		f.run(e + 8)
		if err := f.st.Compact(ctx); err != nil {
			t.Fatal(err)
		}
		f.run(e + 10)
		for p, part := range f.st.Partitions() {
			v := mustView(t, part.DB)
			checkRange(t, fmt.Sprintf("restored, trimmed to %d, run on", e), part.DB, f.m, PartitionIndex(p), PartitionCount(n), v.Lo(), v.Hi())
		}
		f.close()
		os.RemoveAll(dir)
	}
}

// readOnDemand opens st's state for reading on demand at epoch e (as
// every resume does) and reads every key m ever wrote, as "step/key" ->
// "value@epoch".
func readOnDemand(t *testing.T, st *Store, e Epoch, m *flowModel) map[string]string {
	t.Helper()
	ctx := context.Background()
	if _, err := st.OpenState(ctx, e, func(StepID) bool { return true }, false, func([]Row) error { return nil }); err != nil {
		t.Fatal(err)
	}
	keys := map[StepID][]StateKey{}
	seen := map[string]bool{}
	for _, rs := range m.changes {
		for _, r := range rs {
			if k := string(r.Step) + "/" + string(r.Key); !seen[k] {
				seen[k] = true
				keys[r.Step] = append(keys[r.Step], r.Key)
			}
		}
	}
	got := map[string]string{}
	for step, ks := range keys {
		err := st.ReadState(ctx, step, ks, func(i int, ep Epoch, v []byte) error {
			got[string(step)+"/"+string(ks[i])] = fmt.Sprintf("%q@%d", v, ep)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// A delta's base rows are newer than the image's segments below the
// watermark, which the delta leaves in place. The first compaction after
// the restore merges those segments into the base: it must not put a
// key's older change over its newer base row. (It did: the restored
// partition resumed with the value of epoch 1 instead of epoch 2.)
func TestDelta_CompactionAfterRestoreKeepsTheDeltasNewerBaseRows(t *testing.T) {
	ctx := context.Background()
	dir, tmp := initDir(t, 1), t.TempDir()
	opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: 2 * time.Second}, CompactEvery: 2}
	st, err := Open(ctx, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.Commit(ctx, 0, 2, []Row{{Step: "s", Key: "k", Epoch: 1, Value: []byte("old")}}))
	must(st.Flush(ctx))
	image := filepath.Join(tmp, "image.sqlite3")
	vacuumInto(t, st.parts[0].DB, image) // frontier 2; k@1 in a segment
	must(st.Commit(ctx, 0, 3, []Row{{Step: "s", Key: "k", Epoch: 2, Value: []byte("new")}}))
	for f := Epoch(4); f <= 7; f++ {
		must(st.Commit(ctx, 0, f, nil))
	}
	must(st.Compact(ctx)) // commit epoch 5: k@2 is a base row
	must(st.Close())
	delta := filepath.Join(tmp, "delta.sqlite3")
	readTx(t, filepath.Join(dir, "part-0.sqlite3"), func(conn *sql.Conn) {
		if _, err := WriteDelta(ctx, conn, 2, delta); err != nil {
			t.Fatal(err)
		}
	})
	rdir := t.TempDir()
	layDelta(t, image, delta, 2, filepath.Join(rdir, "part-0.sqlite3"))

	st, err = Open(ctx, rdir, opts)
	must(err)
	rp, err := st.Begin(ctx, 1)
	must(err)
	if got := loadAll(t, st, rp.Epoch); got["s/k"] != "new" {
		t.Fatalf("restored: k = %q, want new", got["s/k"])
	}
	must(st.Commit(ctx, 0, rp.Epoch+1, nil)) // the commit epoch moves: compaction merges k@1
	must(st.Compact(ctx))
	must(st.Close())
	st, err = Open(ctx, rdir, opts)
	must(err)
	defer st.Close()
	rp, err = st.Begin(ctx, 1)
	must(err)
	if got := loadAll(t, st, rp.Epoch); got["s/k"] != "new" {
		t.Fatalf("restored and compacted: k = %q, want new", got["s/k"])
	}
}
