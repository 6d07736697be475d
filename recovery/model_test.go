package recovery

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// flowModel is what a flow's state must be: every epoch's changes, in the
// order they were committed; the state below an epoch folds them.
type flowModel struct {
	changes map[Epoch][]Row
}

func newModel() *flowModel { return &flowModel{changes: map[Epoch][]Row{}} }

// apply records committed rows (copies: callers reuse theirs).
func (m *flowModel) apply(rows []Row) {
	for _, r := range rows {
		if r.Value != nil {
			r.Value = append([]byte{}, r.Value...)
		}
		m.changes[r.Epoch] = append(m.changes[r.Epoch], r)
	}
}

// resume forgets the changes at or after e: a run resuming at e runs
// those epochs again.
func (m *flowModel) resume(e Epoch) {
	for ep := range m.changes {
		if ep >= e {
			delete(m.changes, ep)
		}
	}
}

func (m *flowModel) clone() *flowModel {
	c := newModel()
	for e, rs := range m.changes {
		c.changes[e] = slices.Clone(rs)
	}
	return c
}

// below is each key's newest state below e, of the keys partition p of n
// holds (n = 0: every key), as "step/key" -> "value@epoch".
func (m *flowModel) below(e Epoch, p PartitionIndex, n PartitionCount) map[string]string {
	var epochs []Epoch
	for ep := range m.changes {
		if ep < e {
			epochs = append(epochs, ep)
		}
	}
	slices.Sort(epochs)
	out := map[string]string{}
	for _, ep := range epochs {
		for _, r := range m.changes[ep] {
			if n > 0 && PartitionFor(r.Step, r.Key, n) != p {
				continue
			}
			k := string(r.Step) + "/" + string(r.Key)
			if r.Value == nil {
				delete(out, k)
				continue
			}
			out[k] = fmt.Sprintf("%q@%d", r.Value, r.Epoch)
		}
	}
	return out
}

// partState loads one partition below e (see LoadPartition) in the form
// flowModel.below gives.
func partState(t *testing.T, q queryer, e Epoch) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := LoadPartition(context.Background(), q, e, func(rows []Row) error {
		for _, r := range rows {
			if r.Value == nil {
				return fmt.Errorf("row %s/%s@%d has a nil value", r.Step, r.Key, r.Epoch)
			}
			k := string(r.Step) + "/" + string(r.Key)
			if _, dup := out[k]; dup {
				return fmt.Errorf("key %s loaded twice", k)
			}
			out[k] = fmt.Sprintf("%q@%d", r.Value, r.Epoch)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("load below %d: %v", e, err)
	}
	return out
}

// diffState describes how got differs from want ("" if it does not).
func diffState(got, want map[string]string) string {
	var d []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			d = append(d, fmt.Sprintf("%s: missing, want %s", k, w))
		} else if g != w {
			d = append(d, fmt.Sprintf("%s: %s, want %s", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			d = append(d, fmt.Sprintf("%s: %s, want no state", k, g))
		}
	}
	slices.Sort(d)
	if len(d) > 8 {
		d = append(d[:8], fmt.Sprintf("… %d more", len(d)-8))
	}
	return strings.Join(d, "; ")
}

// checkRange checks that partition q (of n) gives the model's state for
// every epoch in [lo, hi].
func checkRange(t *testing.T, what string, q queryer, m *flowModel, p PartitionIndex, n PartitionCount, lo, hi Epoch) {
	t.Helper()
	for e := lo; e <= hi; e++ {
		if d := diffState(partState(t, q, e), m.below(e, p, n)); d != "" {
			t.Fatalf("%s: partition %d below epoch %d (range [%d, %d]): %s", what, p, e, lo, hi, d)
		}
	}
}

// workload makes random changes of epoch e over a small key space of two
// steps: new keys, overwrites, tombstones, zero-length values, and a key
// changed twice in one commit (the later change wins).
type workload struct {
	r    *rand.Rand
	keys int
}

func (w *workload) epoch(e Epoch, n int) []Row {
	rows := make([]Row, 0, n)
	for i := 0; i < n; i++ {
		step := StepID("s.count")
		if w.r.Intn(3) == 0 {
			step = "s.window"
		}
		r := Row{Step: step, Key: StateKey(fmt.Sprintf("k%03d", w.r.Intn(w.keys))), Epoch: e}
		switch x := w.r.Intn(10); {
		case x < 2:
			r.Value = nil // tombstone
		case x == 2:
			r.Value = []byte{}
		default:
			r.Value = []byte(fmt.Sprintf("v%d.%d", e, w.r.Intn(1000)))
		}
		rows = append(rows, r)
	}
	return rows
}

// testFlow runs a flow with a store of its own (one worker), keeping the
// model of its state.
type testFlow struct {
	t     *testing.T
	dir   string
	opts  Options
	st    *Store
	m     *flowModel
	wl    *workload
	next  Epoch // the next epoch to commit
	fixed map[Epoch][]Row
	slice int // keys a compaction slice merges (0: the default)
}

// newTestFlow starts a flow of n partitions with opts; fixed are rows
// committed with the random ones of their epochs.
func newTestFlow(t *testing.T, n int, opts Options, seed int64, fixed map[Epoch][]Row) *testFlow {
	f := &testFlow{t: t, dir: initDir(t, n), m: newModel(), wl: &workload{r: rand.New(rand.NewSource(seed)), keys: 40}, fixed: fixed, opts: opts}
	f.open()
	return f
}

func (f *testFlow) open() {
	ctx := context.Background()
	st, err := Open(ctx, f.dir, f.opts)
	if err != nil {
		f.t.Fatal(err)
	}
	if f.slice > 0 {
		st.slice = f.slice
	}
	rp, err := st.Begin(ctx, 1)
	if err != nil {
		f.t.Fatal(err)
	}
	f.st, f.next = st, rp.Epoch
	f.m.resume(rp.Epoch)
}

// run commits epochs up to (not including) `until`, one commit each,
// waiting for each to be durable (an epoch lasts far longer than a commit).
func (f *testFlow) run(until Epoch) {
	ctx := context.Background()
	for ; f.next < until; f.next++ {
		rows := append(f.wl.epoch(f.next, 12), f.fixed[f.next]...)
		if err := f.st.Commit(ctx, 0, f.next+1, rows); err != nil {
			f.t.Fatal(err)
		}
		f.m.apply(rows)
		if err := f.st.Flush(ctx); err != nil {
			f.t.Fatal(err)
		}
	}
}

func (f *testFlow) close() {
	if err := f.st.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.st = nil
}

func (f *testFlow) path(p int) string {
	return filepath.Join(f.dir, fmt.Sprintf("part-%d.sqlite3", p))
}

// copyPartition copies a partition file with its -wal, if any (a crash
// image when nothing is writing; callers make sure).
func copyPartition(t *testing.T, from, to string) {
	t.Helper()
	for _, suf := range []string{"", "-wal"} {
		src, err := os.Open(from + suf)
		if os.IsNotExist(err) && suf != "" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.Create(to + suf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		src.Close()
		if err := dst.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// vacuumInto writes a consistent copy of the database db reads to path.
func vacuumInto(t *testing.T, db *sql.DB, path string) {
	t.Helper()
	if _, err := db.Exec(`VACUUM INTO ?`, path); err != nil {
		t.Fatalf("vacuum into %s: %v", filepath.Base(path), err)
	}
}

// readTx runs fn in a read transaction of its own on the partition file at
// path (what a backup does).
func readTx(t *testing.T, path string, fn func(conn *sql.Conn)) {
	t.Helper()
	ctx := context.Background()
	db, err := OpenDB(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(ctx, `ROLLBACK`)
	fn(conn)
}

func mustView(t *testing.T, q queryer) *View {
	t.Helper()
	v, err := ReadView(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
