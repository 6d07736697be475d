package recovery

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"
)

// readAll reads every key k000..k059 of both steps through ReadState, in
// the form flowModel.below gives.
func readAll(t *testing.T, st *Store) map[string]string {
	t.Helper()
	out := map[string]string{}
	keys := make([]StateKey, 60)
	for i := range keys {
		keys[i] = StateKey(fmt.Sprintf("k%03d", i))
	}
	for _, step := range []StepID{"s.count", "s.window"} {
		err := st.ReadState(context.Background(), step, keys, func(i int, e Epoch, v []byte) error {
			k := string(step) + "/" + string(keys[i])
			if _, dup := out[k]; dup {
				return fmt.Errorf("%s read twice", k)
			}
			out[k] = fmt.Sprintf("%q@%d", v, e)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// scanAll scans both steps through ScanState (every key, or those written
// after `after`), checking the key order.
func scanAll(t *testing.T, st *Store, after Epoch, every bool, keep func(StateKey) bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, step := range []StepID{"s.count", "s.window"} {
		var last StateKey
		err := st.ScanState(context.Background(), step, after, every, keep, func(rows []Row) error {
			for _, r := range rows {
				if r.Step != step || r.Value == nil || (last != "" && r.Key <= last) {
					return fmt.Errorf("row %s/%s@%d after %q", r.Step, r.Key, r.Epoch, last)
				}
				last = r.Key
				out[string(step)+"/"+string(r.Key)] = fmt.Sprintf("%q@%d", r.Value, r.Epoch)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// after keeps the entries of state written after epoch e and kept by keep.
func after(state map[string]string, e Epoch, keep func(StateKey) bool) map[string]string {
	out := map[string]string{}
	for k, v := range state {
		var ep Epoch
		fmt.Sscanf(v[strings.LastIndexByte(v, '@')+1:], "%d", &ep)
		if ep > e && (keep == nil || keep(StateKey(k[strings.IndexByte(k, '/')+1:]))) {
			out[k] = v
		}
	}
	return out
}

// A store opened for state on demand reads every key's newest state, as
// a full load would, at the resume epoch and (with full indexing) as
// commits and compactions go on; its scans give the keys written after an
// epoch, in key order; and it hands over the rows of the steps that are
// not read on demand, as Load does.
func TestState_ReadsAndScansAgreeWithTheModel(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		full  bool
		every Epoch // CompactEvery
	}{
		{"static index", false, 0},
		{"static index over a compacted base", false, 3},
		{"full index, compacting every epoch", true, 1},
		{"full index, compacting every 4 epochs", true, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: 2 * time.Second}, CompactEvery: tc.every, CompactTogether: true}
			pos := map[Epoch][]Row{}
			for e := Epoch(1); e < 40; e++ {
				pos[e] = []Row{{Step: "s.read", Key: "p0", Epoch: e, Value: []byte(fmt.Sprint(e))}}
			}
			f := newTestFlow(t, 4, opts, 3, pos)
			f.wl.keys = 60
			f.run(14)
			f.close()
			f.open()
			resume := f.next
			want := f.m.below(1<<62, 0, 0)
			eager := map[string]string{}
			info, err := f.st.OpenState(ctx, resume, func(s StepID) bool { return s != "s.read" }, tc.full, func(rows []Row) error {
				for _, r := range rows {
					eager[string(r.Step)+"/"+string(r.Key)] = fmt.Sprintf("%q@%d", r.Value, r.Epoch)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !info.Steps["s.count"] || !info.Steps["s.window"] || info.Steps["s.read"] || len(info.Steps) != 2 {
				t.Fatalf("steps with state: %v", info.Steps)
			}
			if want := map[string]string{"s.read/p0": fmt.Sprintf("%q@%d", fmt.Sprint(resume-1), resume-1)}; diffState(eager, want) != "" {
				t.Fatalf("rows handed over: %s", diffState(eager, want))
			}
			lazyWant := func() map[string]string {
				w := f.m.below(1<<62, 0, 0)
				delete(w, "s.read/p0")
				return w
			}
			delete(want, "s.read/p0")
			if d := diffState(readAll(t, f.st), want); d != "" {
				t.Fatalf("read at the resume epoch: %s", d)
			}
			odd := func(k StateKey) bool { return k[len(k)-1]%2 == 1 }
			for _, e := range []Epoch{0, 5, 11, resume - 1} {
				if d := diffState(scanAll(t, f.st, e, false, odd), after(want, e, odd)); d != "" {
					t.Fatalf("scan after %d: %s", e, d)
				}
			}
			if d := diffState(scanAll(t, f.st, resume-1, true, nil), want); d != "" {
				t.Fatalf("scan of every key: %s", d)
			}
			if !tc.full {
				f.close()
				return
			}
			for f.next < 30 {
				f.run(f.next + 1)
				if w := f.st.Written(0); w != uint64(f.next-resume) {
					t.Fatalf("after %d commits, %d written", f.next-resume, w)
				}
				want := lazyWant()
				if d := diffState(readAll(t, f.st), want); d != "" {
					t.Fatalf("read after epoch %d: %s", f.next-1, d)
				}
				for _, e := range []Epoch{resume - 1, f.next - 3} {
					if d := diffState(scanAll(t, f.st, e, false, nil), after(want, e, nil)); d != "" {
						t.Fatalf("after epoch %d, scan after %d: %s", f.next-1, e, d)
					}
				}
			}
			if err := f.st.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			if d := diffState(readAll(t, f.st), lazyWant()); d != "" {
				t.Fatalf("read after a full compaction: %s", d)
			}
			var live int
			for _, ps := range f.st.state.Load().parts {
				live += len(ps.live.list())
			}
			if tc.every == 1 && live > 4*4 {
				t.Errorf("%d segments indexed after compacting every epoch, want at most d+2 per partition", live)
			}
			if f.st.StateBytes() <= 0 {
				t.Errorf("state bytes %d", f.st.StateBytes())
			}
			f.close()
		})
	}
}

// A live row finds each of its keys and no other, and spans a step.
func TestLiveRow_FindsItsKeys(t *testing.T) {
	var es []entry
	for i := 0; i < 1000; i++ {
		num := uint64(1 + i%3)
		e := entry{k: appendKey(nil, num, StateKey(fmt.Sprintf("key%04d", i))), epoch: 7}
		if i%10 == 0 {
			e.tomb = true
		} else {
			e.val = []byte(fmt.Sprint(i))
		}
		es = append(es, e)
	}
	es = sortEntries(es)
	r, err := newLiveRow(1, 7, encodeSegment(nil, es))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		got, ok := r.find(e.k, keyHash(e.k))
		if !ok || got.tomb != e.tomb || string(got.val) != string(e.val) || got.epoch != 7 {
			t.Fatalf("find %q: %+v %v", e.k, got, ok)
		}
	}
	for i := 1000; i < 2000; i++ {
		k := appendKey(nil, 1, StateKey(fmt.Sprintf("key%04d", i)))
		if _, ok := r.find(k, keyHash(k)); ok {
			t.Fatalf("found %q, which the row does not hold", k)
		}
	}
	lo, hi := stepRange(2)
	i, j := r.span(lo, hi)
	if j-i != 333 || !slices.Equal(r.key(i)[:1], lo) {
		t.Fatalf("step 2 spans [%d, %d)", i, j)
	}
	if _, err := newLiveRow(1, 7, []byte{segmentFormat, 2, 1, 'a', 0}); err == nil {
		t.Fatal("a malformed segment was indexed")
	}
}

// Many small segments of one epoch (a run writing keys early commits one
// per write) are merged in the index once there are more than mergeAt:
// every lookup still finds each key's newest entry (the latest segment's
// of its epoch, a tombstone included), the index holds a few rows per
// epoch, and its byte count is what its rows hold.
func TestLiveIndex_MergesAnEpochsManySegments(t *testing.T) {
	r := rand.New(rand.NewSource(9))
	var x liveIndex
	want := map[string]entry{} // newest entry per key
	seq := int64(0)
	for round := 0; round < 60; round++ {
		e := Epoch(3 + round/20) // 20 commits per epoch, in order
		seen := map[string]bool{}
		var es []entry
		for i := 0; i < 50; i++ {
			k := string(appendKey(nil, 1, StateKey(fmt.Sprintf("k%03d", r.Intn(400)))))
			if seen[k] {
				continue
			}
			seen[k] = true
			en := entry{k: []byte(k), epoch: e}
			if r.Intn(5) == 0 {
				en.tomb = true
			} else {
				en.val = []byte(fmt.Sprint(round, "-", i))
			}
			es = append(es, en)
			want[k] = en
		}
		seq++
		row, err := newLiveRow(seq, e, encodeSegment(nil, sortEntries(es)))
		if err != nil {
			t.Fatal(err)
		}
		x.add([]*liveRow{row})
	}
	rows := x.list()
	per := map[Epoch]int{}
	var bytes int64
	for _, row := range rows {
		per[row.epoch]++
		bytes += row.size()
	}
	for e, n := range per {
		if n > mergeAt {
			t.Fatalf("epoch %d: %d rows in the index, want at most %d", e, n, mergeAt)
		}
	}
	if got := x.bytes.Load(); got != bytes {
		t.Fatalf("index counts %d bytes, its rows hold %d", got, bytes)
	}
	for k, w := range want {
		got, ok := newest(rows, []byte(k))
		if !ok || got.epoch != w.epoch || got.tomb != w.tomb || string(got.val) != string(w.val) {
			t.Fatalf("key %q: got %+v (found %v), want %+v", k, got, ok, w)
		}
	}
	t.Logf("%d rows for 60 segments of 3 epochs", len(rows))
}
