package recovery

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
	"time"
)

// passModel is what the partitions should hold: each key's newest value
// ("" for a tombstone) and its epoch.
type passModel map[StateKey]struct {
	v string
	e Epoch
}

// changedAfter is what a scan after epoch a must give.
func (m passModel) changedAfter(a Epoch) map[string]string {
	out := map[string]string{}
	for k, r := range m {
		if r.e > a && r.v != "" {
			out[string(k)] = fmt.Sprintf("%s@%d", r.v, r.e)
		}
	}
	return out
}

// passRun is one execution over a store: it commits epochs of changes,
// compacting after each (the pass's compactions), and keeps the model.
type passRun struct {
	t    *testing.T
	st   *Store
	m    passModel
	next Epoch
}

func beginPassRun(t *testing.T, dir string, m passModel, opts Options) *passRun {
	t.Helper()
	ctx := context.Background()
	st, err := Open(ctx, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := st.Begin(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.OpenState(ctx, rp.Epoch, func(StepID) bool { return true }, true, func([]Row) error { return nil }); err != nil {
		t.Fatal(err)
	}
	return &passRun{t: t, st: st, m: m, next: rp.Epoch}
}

// epoch commits one epoch: keys[i] gets a new value, or a tombstone where
// del says so; then compacts.
func (r *passRun) epoch(keys []int, del func(int) bool) {
	r.t.Helper()
	ctx := context.Background()
	e := r.next
	rows := make([]Row, 0, len(keys))
	for _, i := range keys {
		k := StateKey(fmt.Sprintf("k%05d", i))
		row := Row{Step: "s.count", Key: k, Epoch: e}
		v := ""
		if del == nil || !del(i) {
			v = fmt.Sprintf("v%d.%d", i, e)
			row.Value = []byte(v)
		}
		rows = append(rows, row)
		r.m[k] = struct {
			v string
			e Epoch
		}{v, e}
	}
	if err := r.st.Commit(ctx, 0, e+1, rows); err != nil {
		r.t.Fatal(err)
	}
	r.next++
	if err := r.st.Flush(ctx); err != nil {
		r.t.Fatal(err)
	}
	if err := r.st.Compact(ctx); err != nil {
		r.t.Fatal(err)
	}
}

// scan is ScanState after a, and whether a partition's scan read the
// step's base rows (instead of the pass log, or nothing).
func (r *passRun) scan(a Epoch) (map[string]string, bool) {
	r.t.Helper()
	ctx := context.Background()
	got := map[string]string{}
	err := r.st.ScanState(ctx, "s.count", a, false, nil, func(rows []Row) error {
		for _, row := range rows {
			got[string(row.Key)] = fmt.Sprintf("%s@%d", row.Value, row.Epoch)
		}
		return nil
	})
	if err != nil {
		r.t.Fatal(err)
	}
	readBase := false
	si := r.st.state.Load()
	for pos, ps := range si.parts {
		num, _ := r.st.writers[pos].steps.lookup("s.count")
		sc, err := newPartScan(ctx, ps, r.st.writers[pos], num, a, false, nil)
		if err != nil {
			r.t.Fatal(err)
		}
		readBase = readBase || (sc.rows != nil && !sc.viaLog)
		sc.close()
	}
	return got, readBase
}

func (r *passRun) close() {
	r.t.Helper()
	if err := r.st.Close(); err != nil {
		r.t.Fatal(err)
	}
}

func span(lo, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = lo + i
	}
	return out
}

// End of input in a continuation whose compactions ran inside the pass
// reads the keys it changed from the pass log, and gives what a scan of
// the whole base gives (new keys, changed keys, keys deleted again, keys
// changed twice); a scan after an older epoch, or after a crash in the
// middle of the pass, or once the continuation changed more than the
// log's share of the base, reads the base, and is as right.
func TestPassLog_EndOfInputReadsWhatTheContinuationChanged(t *testing.T) {
	opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: time.Second}, CompactEvery: 1}
	dir := initDir(t, 3)
	m := passModel{}
	first := beginPassRun(t, dir, m, opts)
	for i := 0; i < 8; i++ {
		first.epoch(span(i*500, 500), nil) // 4000 keys
	}
	first.epoch(span(0, 100), func(int) bool { return true }) // and 100 deleted
	end := first.next - 1                                     // the flow ended here
	first.close()

	cont := beginPassRun(t, dir, m, opts)
	if cont.next != end+1 {
		t.Fatalf("the continuation resumes at %d, after an end at %d", cont.next, end)
	}
	rnd := rand.New(rand.NewSource(1))
	for range 4 {
		keys := []int{4000 + rnd.Intn(50)} // new keys
		for range 40 {
			keys = append(keys, rnd.Intn(4000)) // old keys, some deleted ones among them
		}
		cont.epoch(keys, func(i int) bool { return i%7 == 0 })
	}
	cont.epoch(span(3000, 10), nil) // changed, compacted, then deleted
	cont.epoch(span(3500, 10), nil)
	cont.epoch(span(3000, 10), func(int) bool { return true })
	cont.epoch(span(3600, 10), nil)
	for _, a := range []Epoch{end, end - 1, end - 5} {
		got, readBase := cont.scan(a)
		if d := diffState(got, m.changedAfter(a)); d != "" {
			t.Fatalf("scan after %d (the end at %d): %s", a, end, d)
		}
		if want := a != end; readBase != want {
			t.Errorf("scan after %d read the base: %v, want %v", a, readBase, want)
		}
	}
	cont.close() // a crash in the pass: the next run resumes past the end

	again := beginPassRun(t, dir, m, opts)
	for _, p := range again.st.parts {
		var n int
		if err := p.DB.QueryRow(`SELECT count(*) FROM passlog`).Scan(&n); err != nil || n != 0 {
			t.Errorf("partition %d: %d rows (%v) of the last execution's pass log left at Begin", p.Index, n, err)
		}
	}
	again.epoch(span(1000, 20), nil)
	again.epoch(span(1020, 20), nil)
	got, readBase := again.scan(end)
	if d := diffState(got, m.changedAfter(end)); d != "" {
		t.Fatalf("scan after a resume in the middle of the pass: %s", d)
	}
	if !readBase {
		t.Errorf("a resume in the middle of the pass read a pass log that does not cover it")
	}
	again.close()

	// Continuations of a flow that ended: the first changes a few keys,
	// compaction after compaction, and keeps the log; then it changes more
	// and more keys until the log holds more than its share (a sixteenth
	// of the partition); the second changes more than that in one
	// compaction. Both give the log up (and the second writes no more
	// than its share), and their scans read the base.
	end = again.next - 1
	grow := beginPassRun(t, dir, m, opts)
	for i := range 3 {
		grow.epoch(span(50*i, 60), nil)
	}
	if got, readBase := grow.scan(end); readBase || diffState(got, m.changedAfter(end)) != "" {
		t.Fatalf("before the log's share is reached: read the base %v, %s", readBase, diffState(got, m.changedAfter(end)))
	}
	for i := range 20 {
		grow.epoch(span(200+150*i, 150), nil)
	}
	grow.epoch(span(3000, 5), nil) // so that the epochs above are compacted
	grow.epoch(span(3005, 5), nil)
	tooMany := func(r *passRun, end Epoch, what string) {
		got, readBase := r.scan(end)
		if d := diffState(got, m.changedAfter(end)); d != "" {
			t.Fatalf("scan after %s: %s", what, d)
		}
		if !readBase {
			t.Errorf("the scan read a pass log given up after %s", what)
		}
		for _, w := range r.st.writers {
			var n, bytes int64
			if err := w.p.DB.QueryRow(`SELECT count(*), coalesce(sum(length(data)), 0) FROM passlog`).Scan(&n, &bytes); err != nil || n != 1 || bytes != 0 {
				t.Errorf("partition %d: a pass log given up after %s holds %d rows, %d bytes (%v), want its mark", w.p.Index, what, n, bytes, err)
			}
		}
	}
	tooMany(grow, end, "the log grew past its share")
	grow.close()

	end = grow.next - 1
	big := beginPassRun(t, dir, m, opts)
	big.epoch(span(0, 3000), nil)
	big.epoch(span(3000, 5), nil)
	big.epoch(span(3005, 5), nil)
	tooMany(big, end, "one compaction past the share")
	big.close()
}

// A fresh flow's first run keeps no pass log (its end of input visits every
// key anyway, and it should pay nothing for one).
func TestPassLog_FirstRunKeepsNone(t *testing.T) {
	opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: time.Second}, CompactEvery: 1}
	dir := initDir(t, 2)
	r := beginPassRun(t, dir, passModel{}, opts)
	r.epoch(span(0, 300), nil)
	r.epoch(span(0, 300), nil)
	for _, p := range r.st.parts {
		var n int
		if err := p.DB.QueryRow(`SELECT count(*) FROM passlog`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("partition %d: %d rows in the pass log of a first run", p.Index, n)
		}
	}
	r.close()
}
