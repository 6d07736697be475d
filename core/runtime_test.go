package core_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/connect/file"
	"github.com/flowkeep/flowkeep/connect/gen"
	"github.com/flowkeep/flowkeep/core"
)

// collectSink gathers output items in memory, keyed by epoch of commit.
type collectSink[T any] struct {
	mu    *sync.Mutex
	items *[]T
}

func newCollect[T any]() collectSink[T] { return collectSink[T]{mu: &sync.Mutex{}, items: new([]T)} }

func (c collectSink[T]) Partitions(context.Context) ([]string, error) { return []string{"mem"}, nil }
func (c collectSink[T]) PartitionFor(T) string                        { return "mem" }
func (c collectSink[T]) Open(context.Context, string, []byte) (core.SinkPartition[T], error) {
	return c, nil
}
func (c collectSink[T]) Write(_ context.Context, items []T) error {
	c.mu.Lock()
	*c.items = append(*c.items, items...)
	c.mu.Unlock()
	return nil
}
func (c collectSink[T]) Commit(context.Context, core.Epoch) ([]byte, error) { return nil, nil }
func (c collectSink[T]) Close(context.Context) error                        { return nil }
func (c collectSink[T]) get() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]T(nil), *c.items...)
}

func genWords(parts int, n int64, delay time.Duration) gen.Generator[string] {
	return gen.Generator[string]{Parts: parts, Count: n, Delay: delay, Make: func(p int, i int64) string {
		return fmt.Sprintf("w%d w%d", (i*7+int64(p))%53, i%11)
	}}
}

func countFlow(src core.Source[string], sink core.Sink[core.KV[int64]]) *core.Flow {
	f := core.NewFlow("t")
	lines := core.Input(f, "in", src)
	words := core.FlatMap(lines, "split", func(l string, emit func(string)) {
		for _, w := range strings.Fields(l) {
			emit(w)
		}
	})
	keyed := core.KeyOn(words, "key", func(w string) string { return w })
	counts := core.Fold(keyed, "count", func() int64 { return 0 }, func(a int64, _ string) int64 { return a + 1 })
	core.Output(counts, "out", sink)
	return f
}

func toMap(kvs []core.KV[int64]) map[string]int64 {
	m := map[string]int64{}
	for _, kv := range kvs {
		if _, dup := m[kv.Key]; dup {
			panic("duplicate key " + kv.Key)
		}
		m[kv.Key] = kv.Value
	}
	return m
}

func TestRun_FoldSameResultForAnyWorkerCount(t *testing.T) {
	var want map[string]int64
	for _, w := range []int{1, 2, 3, 5} {
		sink := newCollect[core.KV[int64]]()
		res, err := core.Run(context.Background(), countFlow(genWords(3, 5000, 0), sink), core.Config{Workers: w, EpochInterval: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		got := toMap(sink.get())
		var total int64
		for _, v := range got {
			total += v
		}
		if total != 3*5000*2 {
			t.Fatalf("w=%d: counted %d words, want %d", w, total, 3*5000*2)
		}
		if want == nil {
			want = got
		} else if !maps.Equal(got, want) {
			t.Fatalf("w=%d: counts differ from w=1", w)
		}
		if res.FinalEpoch < res.StartEpoch {
			t.Fatalf("final epoch %d before start %d", res.FinalEpoch, res.StartEpoch)
		}
	}
}

func TestRun_KeyedItemsRunOnHashWorker(t *testing.T) {
	f := core.NewFlow("t")
	lines := core.Input(f, "in", genWords(2, 2000, 0))
	words := core.FlatMap(lines, "split", func(l string, emit func(string)) {
		for _, w := range strings.Fields(l) {
			emit(w)
		}
	})
	keyed := core.KeyOn(words, "key", func(w string) string { return w })
	var bad atomic.Int64
	seen := core.StatefulMap(keyed, "seen", func(st *int, _ string) (*int, string) { return st, "" })
	_ = seen
	// core.Inspect after the stateful step runs on the key's worker.
	core.Inspect(seen, "check", func(w core.WorkerIndex, kv core.KV[string]) {
		if core.WorkerFor(kv.Key, 3) != w {
			bad.Add(1)
		}
	})
	if _, err := core.Run(context.Background(), f, core.Config{Workers: 3}); err != nil {
		t.Fatal(err)
	}
	if bad.Load() != 0 {
		t.Fatalf("%d items processed on the wrong worker", bad.Load())
	}
}

func TestKeyHash_IsFNV1a64(t *testing.T) {
	// Published FNV-1a 64 test vectors; routing must never change.
	for in, want := range map[string]uint64{"": 0xcbf29ce484222325, "a": 0xaf63dc4c8601ec8c, "foobar": 0x85944171f73967e8} {
		if got := core.KeyHash(in); got != want {
			t.Errorf("KeyHash(%q) = %#x, want %#x", in, got, want)
		}
	}
}

func TestRecovery_OnlyChangedKeysAndTombstones(t *testing.T) {
	// core.Epoch 1: a, b set. Then the input ends; core.Fold discards every key at EOF,
	// which must appear as tombstones in the final epoch.
	rec := newMemRecovery()
	sink := newCollect[core.KV[int64]]()
	src := gen.Generator[string]{Parts: 1, Count: 4, Make: func(_ int, i int64) string { return []string{"a", "b", "a", "a"}[i] }}
	res, err := core.Run(context.Background(), countFlow(src, sink), core.Config{Workers: 2, EpochInterval: time.Hour, Recovery: rec})
	if err != nil {
		t.Fatal(err)
	}
	got := toMap(sink.get())
	if got["a"] != 3 || got["b"] != 1 {
		t.Fatalf("counts = %v", got)
	}
	var tomb []string
	// A change may go early, before its worker's frontier passes its epoch;
	// by the end every worker's frontier has passed every change's epoch.
	final := map[core.WorkerIndex]core.Epoch{}
	for _, c := range rec.commitLog {
		final[c.w] = max(final[c.w], c.frontier)
	}
	for _, c := range rec.commitLog {
		for _, ch := range c.changes {
			if ch.Epoch >= final[c.w] {
				t.Errorf("change at epoch %d never covered: worker %d ended at frontier %d", ch.Epoch, c.w, final[c.w])
			}
			if ch.Step == "t.count" && ch.Value == nil {
				tomb = append(tomb, string(ch.Key))
			}
			if ch.Step == "t.count" && ch.Epoch != res.FinalEpoch {
				t.Errorf("state of %s written at epoch %d, want only final epoch %d", ch.Key, ch.Epoch, res.FinalEpoch)
			}
		}
	}
	sort.Strings(tomb)
	if strings.Join(tomb, ",") != "a,b" {
		t.Fatalf("tombstones = %v, want a,b", tomb)
	}
}

// runningMax keeps the max per key and emits it on every item; it survives EOF.
func maxFlow(src core.Source[string], sink core.Sink[core.KV[int64]]) *core.Flow {
	f := core.NewFlow("m")
	lines := core.Input(f, "in", src)
	kv := core.Map(lines, "parse", func(l string) core.KV[int64] {
		k, v, _ := strings.Cut(l, "=")
		n, _ := strconv.ParseInt(v, 10, 64)
		return core.KV[int64]{Key: k, Value: n}
	})
	mx := core.StatefulMap(kv, "max", func(st *int64, v int64) (*int64, int64) {
		if st == nil || v > *st {
			st = &v
		}
		return st, *st
	})
	final := core.Stateful(mx, "last", core.KeyedLogic[int64, int64, int64]{
		OnItem: func(_ string, st *int64, v int64, _ func(int64)) *int64 { return &v },
		OnEOF: func(_ string, st *int64, emit func(int64)) (*int64, bool) {
			emit(*st)
			return st, false
		},
	})
	core.Output(final, "out", sink)
	return f
}

func maxInput(part int, i int64) string {
	return fmt.Sprintf("k%d=%d", (i*31+int64(part))%97, (i*7919)%100003)
}

func TestRecovery_CrashAndResumeMatchesUninterrupted(t *testing.T) {
	const n = 20000
	want := newCollect[core.KV[int64]]()
	if _, err := core.Run(context.Background(), maxFlow(gen.Generator[string]{Parts: 2, Count: n, Make: maxInput}, want), core.Config{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	for _, crashAfter := range []core.Epoch{3, 9} {
		rec := newMemRecovery()
		src := gen.Generator[string]{Parts: 2, Count: n, Make: maxInput, Delay: 2 * time.Millisecond}
		ctx, cancel := context.WithCancel(context.Background())
		rec.crashAt, rec.onCrash = crashAfter, cancel
		// Workers commit at their own pace (a slow one, under -race, may
		// not have committed at all when another reaches crashAfter): the
		// crash waits until every one has, so there is a state to resume.
		rec.crashOnlyResumable = true
		_, err := core.Run(ctx, maxFlow(src, newCollect[core.KV[int64]]()), core.Config{Workers: 3, EpochInterval: 2 * time.Millisecond, Recovery: rec})
		if err == nil {
			t.Fatalf("run finished before the crash at %v", crashAfter)
		}
		got := newCollect[core.KV[int64]]()
		src.Delay = 0
		rec.crashAt = 0 // the resumed run does not crash
		res, err := core.Run(context.Background(), maxFlow(src, got), core.Config{Workers: 2, EpochInterval: time.Millisecond, Recovery: rec})
		if err != nil {
			t.Fatal(err)
		}
		if res.StartEpoch != rec.crashResume || res.StartEpoch <= 1 {
			t.Fatalf("crash at epoch %d resumed at epoch %d, want %d (every worker's durable frontier at the crash)", crashAfter, res.StartEpoch, rec.crashResume)
		}
		if !maps.Equal(toMap(got.get()), toMap(want.get())) {
			t.Fatalf("crash at epoch %d: resumed result differs from uninterrupted", crashAfter)
		}
	}
}

func TestFileSink_RefusesNonEmptyOutputOnFreshRun(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.txt")
	os.WriteFile(out, []byte("keep me\n"), 0o644)
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("x\n"), 0o644)
	f := core.NewFlow("t")
	core.Output(core.Input(f, "in", file.Source{Path: in}), "out", file.Sink{Path: out})
	_, err := core.Run(context.Background(), f, core.Config{Workers: 1})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("err = %v, want already exists", err)
	}
	if b, _ := os.ReadFile(out); string(b) != "keep me\n" {
		t.Fatalf("output was changed to %q", b)
	}
}

func TestFileSink_MissingDirectory(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("x\n"), 0o644)
	f := core.NewFlow("t")
	core.Output(core.Input(f, "in", file.Source{Path: in}), "out", file.Sink{Path: filepath.Join(dir, "nope", "out.txt")})
	if _, err := core.Run(context.Background(), f, core.Config{Workers: 1}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("err = %v", err)
	}
}

func TestFileSource_ContinuationReadsOnlyAppended(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	out := filepath.Join(dir, "out.txt")
	rec := newMemRecovery()
	build := func() *core.Flow {
		f := core.NewFlow("t")
		core.Output(core.Input(f, "in", file.Source{Path: in}), "out", file.Sink{Path: out})
		return f
	}
	os.WriteFile(in, []byte("a\nb\n"), 0o644)
	if _, err := core.Run(context.Background(), build(), core.Config{Workers: 2, Recovery: rec}); err != nil {
		t.Fatal(err)
	}
	fh, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	fh.WriteString("c\nd")
	fh.Close()
	if _, err := core.Run(context.Background(), build(), core.Config{Workers: 3, Recovery: rec}); err != nil {
		t.Fatal(err)
	}
	if _, err := core.Run(context.Background(), build(), core.Config{Workers: 1, Recovery: rec}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if string(b) != "a\nb\nc\nd\n" {
		t.Fatalf("output = %q", b)
	}
}

func TestFlow_DuplicateStepID(t *testing.T) {
	f := core.NewFlow("t")
	s := core.Input(f, "in", genWords(1, 1, 0))
	core.Map(s, "m", func(s string) string { return s })
	core.Map(s, "m", func(s string) string { return s })
	if err := f.Err(); err == nil || !strings.Contains(err.Error(), "t.m") {
		t.Fatalf("err = %v", err)
	}
}

func TestTumblingFold_LateItemsReported(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type ev struct {
		k string
		s int
	}
	evs := []ev{{"a", 0}, {"a", 30}, {"a", 65}, {"a", 10}, {"a", 130}, {"b", 5}}
	f := core.NewFlow("w")
	in := core.Input(f, "in", gen.Generator[ev]{Parts: 1, Count: int64(len(evs)), Make: func(_ int, i int64) ev { return evs[i] }})
	kv := core.Map(in, "key", func(e ev) core.KV[ev] { return core.KV[ev]{Key: e.k, Value: e} })
	w := core.TumblingFold(kv, "win", core.WindowConfig[ev]{Size: time.Minute, Lateness: 0, Time: func(e ev) time.Time { return base.Add(time.Duration(e.s) * time.Second) }},
		func() int { return 0 }, func(a int, _ ev) int { return a + 1 })
	sink := newCollect[core.KV[core.WindowEvent[ev, int]]]()
	core.Output(w, "out", sink)
	if _, err := core.Run(context.Background(), f, core.Config{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, kv := range sink.get() {
		if kv.Value.Late {
			lines = append(lines, fmt.Sprintf("%s late %d", kv.Key, kv.Value.Item.s))
		} else {
			lines = append(lines, fmt.Sprintf("%s %s %d", kv.Key, kv.Value.Start.Format("15:04"), kv.Value.Value))
		}
	}
	sort.Strings(lines)
	want := []string{"a 00:00 2", "a 00:01 1", "a 00:02 1", "a late 10", "b 00:00 1"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("got %v\nwant %v", lines, want)
	}
}

// OnEpoch hears every epoch the run opens, in order, ending with the final one.
func TestRun_OnEpochHearsEachEpochOpen(t *testing.T) {
	var mu sync.Mutex
	var heard []core.Epoch
	sink := newCollect[core.KV[int64]]()
	res, err := core.Run(context.Background(), countFlow(genWords(2, 10*1024, 10*time.Millisecond), sink), core.Config{Workers: 2, EpochInterval: 20 * time.Millisecond,
		OnEpoch: func(e core.Epoch) { mu.Lock(); heard = append(heard, e); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(heard) < 2 {
		t.Fatalf("heard %v over a run of epochs %d..%d", heard, res.StartEpoch, res.FinalEpoch)
	}
	for i, e := range heard {
		if want := res.StartEpoch + core.Epoch(i) + 1; e != want {
			t.Fatalf("heard %v, want epochs %d.. in order", heard, res.StartEpoch+1)
		}
	}
	if last := heard[len(heard)-1]; last != res.FinalEpoch {
		t.Fatalf("last epoch heard %d, final epoch %d", last, res.FinalEpoch)
	}
}

// slowRecovery makes each commit durable only after delay: a writer that
// falls behind.
type slowRecovery struct {
	*memRecovery
	delay   time.Duration
	mu      sync.Mutex
	durable map[core.WorkerIndex]core.Epoch
	changed chan struct{}
	workers int
}

func (s *slowRecovery) Begin(ctx context.Context, workers int) (core.RunInfo, error) {
	s.workers = workers
	return s.memRecovery.Begin(ctx, workers)
}

func (s *slowRecovery) Commit(ctx context.Context, w core.WorkerIndex, frontier core.Epoch, changes []core.Change) error {
	if err := s.memRecovery.Commit(ctx, w, frontier, changes); err != nil {
		return err
	}
	time.AfterFunc(s.delay, func() {
		s.mu.Lock()
		if frontier > s.durable[w] {
			s.durable[w] = frontier
		}
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	})
	return nil
}

func (s *slowRecovery) WaitDurable(ctx context.Context, frontier core.Epoch) error {
	for {
		s.mu.Lock()
		ok := len(s.durable) == s.workers
		for w := 0; w < s.workers; w++ {
			ok = ok && s.durable[core.WorkerIndex(w)] >= frontier
		}
		ch := s.changed
		s.mu.Unlock()
		if ok || frontier <= 1 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// When snapshots are written more slowly than epochs close, epochs stretch
// (the next one closes only once the snapshot before it is durable) instead
// of queuing snapshots: far fewer epochs than the interval asks, and the
// stretching is reported.
func TestRun_EpochsStretchWhenSnapshotsFallBehind(t *testing.T) {
	rec := &slowRecovery{memRecovery: newMemRecovery(), delay: 60 * time.Millisecond, durable: map[core.WorkerIndex]core.Epoch{}, changed: make(chan struct{})}
	var stretched atomic.Int64
	sink := newCollect[core.KV[int64]]()
	began := time.Now()
	res, err := core.Run(context.Background(), countFlow(genWords(2, 60*1024, 10*time.Millisecond), sink), core.Config{Workers: 2, EpochInterval: 2 * time.Millisecond, Recovery: rec,
		OnStretch: func(core.Epoch, time.Duration) { stretched.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	epochs := int(res.FinalEpoch - res.StartEpoch + 1)
	// Unpaced, a 2ms interval would give about took/2ms epochs; paced, each
	// epoch lasts at least the 60ms a snapshot takes to become durable.
	if limit := int(took/(60*time.Millisecond)) + 2; epochs > limit {
		t.Fatalf("%d epochs in %v: more than %d, epochs did not wait for durable snapshots", epochs, took, limit)
	}
	if stretched.Load() == 0 {
		t.Fatal("no stretched epoch reported")
	}
}

// End of input visits the keys of this pass: those touched by this run and
// those a crashed run of the same pass changed, even if this run never
// sees them again; keys of earlier passes are left alone, unless the step
// asks for every key.
func TestRecovery_EndOfInputVisitsThePassKeys(t *testing.T) {
	// seen runs the flow over items and returns the keys its end of input
	// visited, and how many items of key "a" this run read.
	seen := func(rec core.Recovery, items []string, every bool, crashAfter int) ([]string, int, error) {
		f := core.NewFlow("p")
		in := core.Input(f, "in", gen.Generator[string]{Parts: 1, Count: int64(len(items)), Make: func(_ int, i int64) string { return items[i] }, Delay: time.Millisecond, Batch: 1})
		kv := core.KeyOn(in, "key", func(s string) string { return s })
		var out sync.Mutex
		var got []string
		readA := 0
		st := core.Stateful(kv, "s", core.KeyedLogic[string, int, string]{
			EOFForEveryKey: every,
			OnItem: func(k string, s *int, _ string, _ func(string)) *int {
				if k == "a" {
					out.Lock()
					readA++
					out.Unlock()
				}
				if s == nil {
					s = new(int)
				}
				*s++
				return s
			},
			OnEOF: func(k string, s *int, emit func(string)) (*int, bool) {
				emit(k)
				return s, false
			},
		})
		core.Inspect(st, "out", func(_ core.WorkerIndex, kv core.KV[string]) {
			out.Lock()
			got = append(got, kv.Value)
			out.Unlock()
		})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		m := rec.(*memRecovery)
		m.crashAt, m.onCrash = core.Epoch(crashAfter), cancel
		_, err := core.Run(ctx, f, core.Config{Workers: 2, EpochInterval: 3 * time.Millisecond, Recovery: rec})
		sort.Strings(got)
		return got, readA, err
	}
	rec := newMemRecovery()
	// Pass 1: a few "a", then many "b"; the crash comes while "b" is read,
	// so the resumed run never reads "a" again, yet "a" belongs to its pass.
	items := make([]string, 0, 405)
	for i := 0; i < 5; i++ {
		items = append(items, "a")
	}
	for i := 0; i < 400; i++ {
		items = append(items, "b")
	}
	if _, _, err := seen(rec, items, false, 20); err == nil {
		t.Fatal("the run finished before the crash")
	}
	got, readA, err := seen(rec, items, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	if readA != 0 {
		t.Fatalf("the resumed run read %d items of a; the test needs it to resume after them", readA)
	}
	if fmt.Sprint(got) != "[a b]" {
		t.Fatalf("end of the resumed pass visited %v, want [a b]", got)
	}
	// Pass 2 reads only more "c": a and b belong to an earlier pass.
	items = append(items, "c")
	if got, _, _ = seen(rec, items, false, 0); fmt.Sprint(got) != "[c]" {
		t.Fatalf("end of pass 2 visited %v, want [c]", got)
	}
	items = append(items, "d")
	if got, _, _ = seen(rec, items, true, 0); fmt.Sprint(got) != "[a b c d]" {
		t.Fatalf("with EOFForEveryKey, end of pass 3 visited %v, want every key", got)
	}
}

func TestRecovery_RestoredKeyDiscardedThenRecreatedStartsAfresh(t *testing.T) {
	rec := newMemRecovery()
	run := func(items []string) []string {
		f := core.NewFlow("p")
		in := core.Input(f, "in", gen.Generator[string]{Parts: 1, Count: int64(len(items)), Make: func(_ int, i int64) string { return items[i] }, Delay: 2 * time.Millisecond, Batch: 1})
		kv := core.KeyOn(in, "key", func(s string) string { return s[:1] })
		st := core.StatefulMap(kv, "count", func(n *int, s string) (*int, string) {
			if s[1] == '-' {
				return nil, "x=deleted"
			}
			if n == nil {
				n = new(int)
			}
			*n++
			return n, fmt.Sprintf("%s=%d", s[:1], *n)
		})
		got := newCollect[core.KV[string]]()
		core.Output(st, "out", got)
		if _, err := core.Run(context.Background(), f, core.Config{Workers: 2, EpochInterval: time.Millisecond, Recovery: rec}); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range got.get() {
			out = append(out, kv.Value)
		}
		return out
	}
	items := []string{"x+", "x+", "y+"}
	run(items)
	// The continuation discards the restored x, and (epochs later) counts it
	// again from nothing; y, restored and never touched, keeps its count.
	items = append(items, "x-", "y+", "y+", "x+", "y+")
	// Workers interleave keys; each key's own outputs keep their order.
	perKey := map[byte][]string{}
	for _, v := range run(items) {
		perKey[v[0]] = append(perKey[v[0]], v)
	}
	if got, want := fmt.Sprint(perKey['x'], perKey['y']), "[x=deleted x=1] [y=2 y=3 y=4]"; got != want {
		t.Fatalf("continuation emitted %s, want %s", got, want)
	}
}
