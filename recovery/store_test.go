package recovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustDur(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return d
}

func initDir(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	if err := Init(context.Background(), dir, n); err != nil {
		t.Fatal(err)
	}
	return dir
}

func openStore(t *testing.T, dir string, s, b time.Duration) *Store {
	t.Helper()
	st, err := Open(context.Background(), dir, Options{FlowName: "f", Intervals: Intervals{Snapshot: s, Backup: b}})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func loadAll(t *testing.T, st *Store, below Epoch) map[string]string {
	t.Helper()
	var mu sync.Mutex
	got := map[string]string{}
	err := st.Load(context.Background(), below, func(rows []Row) error {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range rows {
			got[string(r.Step)+"/"+string(r.Key)] = string(r.Value)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestInit_CreatesPartitionsAndRefusesTwice(t *testing.T) {
	dir := initDir(t, 3)
	for i := 0; i < 3; i++ {
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("part-%d.sqlite3", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := Init(context.Background(), dir, 3); !errors.Is(err, ErrAlreadyInit) {
		t.Fatalf("second init: %v", err)
	}
	if err := Init(context.Background(), filepath.Join(dir, "missing"), 2); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing dir: %v", err)
	}
}

func TestDiscover_ErrorsTellWhatToDo(t *testing.T) {
	ctx := context.Background()
	t.Run("no partitions", func(t *testing.T) {
		_, err := Discover(ctx, t.TempDir(), false, "f")
		if !errors.Is(err, ErrNoPartitions) || !strings.Contains(err.Error(), "recovery init") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("missing partition", func(t *testing.T) {
		dir := initDir(t, 4)
		os.Remove(filepath.Join(dir, "part-2.sqlite3"))
		_, err := Discover(ctx, dir, false, "f")
		if !errors.Is(err, ErrMissingPartitions) || !strings.Contains(err.Error(), "partitions 2 of 4") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("mixed counts", func(t *testing.T) {
		dir := initDir(t, 2)
		other := initDir(t, 3)
		copyFile(t, filepath.Join(other, "part-2.sqlite3"), filepath.Join(dir, "part-2.sqlite3"))
		_, err := Discover(ctx, dir, false, "f")
		if !errors.Is(err, ErrMixedPartitions) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("another flow's partition", func(t *testing.T) {
		dir := initDir(t, 2)
		other := initDir(t, 2)
		os.Remove(filepath.Join(dir, "part-1.sqlite3"))
		copyFile(t, filepath.Join(other, "part-1.sqlite3"), filepath.Join(dir, "stray.sqlite3"))
		_, err := Discover(ctx, dir, false, "f")
		if !errors.Is(err, ErrForeignFlow) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("found by content not name", func(t *testing.T) {
		dir := initDir(t, 2)
		os.Rename(filepath.Join(dir, "part-0.sqlite3"), filepath.Join(dir, "renamed.sqlite3"))
		ps, err := Discover(ctx, dir, false, "f")
		if err != nil {
			t.Fatal(err)
		}
		closeAll(ps)
	})
	t.Run("flow name recorded at first run", func(t *testing.T) {
		dir := initDir(t, 2)
		st := openStore(t, dir, time.Second, 0)
		if _, err := st.Begin(ctx, 1); err != nil {
			t.Fatal(err)
		}
		st.Close()
		_, err := Open(ctx, dir, Options{FlowName: "other"})
		if !errors.Is(err, ErrForeignFlow) || !strings.Contains(err.Error(), `"f"`) {
			t.Fatalf("err = %v", err)
		}
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestStore_ResumeLoadsNewestBelowAndTrims(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 3)
	st := openStore(t, dir, time.Second, time.Hour) // huge d: no GC
	rp, err := st.Begin(ctx, 2)
	if err != nil || rp != (ResumePoint{0, 1}) {
		t.Fatalf("begin = %+v, %v", rp, err)
	}
	commit := func(w WorkerIndex, f Epoch, rows ...Row) {
		if err := st.Commit(ctx, w, f, rows); err != nil {
			t.Fatal(err)
		}
	}
	commit(0, 2, Row{Step: "s", Key: "a", Epoch: 1, Value: []byte("a1")}, Row{Step: "s", Key: "b", Epoch: 1, Value: []byte("b1")})
	commit(1, 2, Row{Step: "s", Key: "c", Epoch: 1, Value: []byte("c1")})
	commit(0, 3, Row{Step: "s", Key: "a", Epoch: 2, Value: []byte("a2")}, Row{Step: "s", Key: "b", Epoch: 2, Value: nil})
	commit(1, 3)
	commit(0, 4, Row{Step: "s", Key: "a", Epoch: 3, Value: []byte("a3")}) // worker 1 never gets to 4
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir, time.Second, time.Hour)
	rp, err = st.Begin(ctx, 5)
	if err != nil || rp != (ResumePoint{1, 3}) {
		t.Fatalf("resume = %+v, %v; want execution 1 at epoch 3", rp, err)
	}
	got := loadAll(t, st, rp.Epoch)
	want := map[string]string{"s/a": "a2", "s/c": "c1"} // b is a tombstone; a3 is at the resume epoch
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("loaded %v, want %v", got, want)
	}
	// a3 (epoch 3) was trimmed: a later resume at 4 must not see it.
	commit(0, 4)
	commit(1, 4)
	commit(2, 4)
	commit(3, 4)
	commit(4, 4)
	st.Close()
	st = openStore(t, dir, time.Second, time.Hour)
	defer st.Close()
	rp, _ = st.Begin(ctx, 1)
	if got := loadAll(t, st, rp.Epoch); got["s/a"] != "a2" || rp.Epoch != 4 {
		t.Fatalf("after trim, resume %d loaded a=%q", rp.Epoch, got["s/a"])
	}
}

// rowsOf returns every change a partition set holds, base rows and segment
// entries, as "step/key@epoch[=tomb]".
func rowsOf(t *testing.T, st *Store) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, p := range st.parts {
		steps, err := loadSteps(ctx, p.DB)
		if err != nil {
			t.Fatal(err)
		}
		name := func(k []byte) string {
			num, key, _ := splitKey(k)
			id, _ := steps.id(num)
			return fmt.Sprintf("%s/%s", id, key)
		}
		rows, err := p.DB.Query(`SELECT k, epoch FROM base`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var k []byte
			var e Epoch
			rows.Scan(&k, &e)
			out = append(out, fmt.Sprintf("%s@%d", name(k), e))
		}
		rows.Close()
		rows, err = p.DB.Query(`SELECT epoch, data FROM segments`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var e Epoch
			var data []byte
			rows.Scan(&e, &data)
			it, err := newSegmentIter(data, e)
			if err != nil {
				t.Fatal(err)
			}
			for it.next() {
				r := fmt.Sprintf("%s@%d", name(it.cur.k), e)
				if it.cur.tomb {
					r += "=tomb"
				}
				out = append(out, r)
			}
		}
		rows.Close()
	}
	sort.Strings(out)
	return out
}

func TestGC_KeepsNewestAtOrBeforeEMinusDPlusNewer(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		b    time.Duration
		want []string
	}{
		// s = 1s. Rows: a@1..a@6, b@2, b@4=tomb, c@5=tomb. After epoch 6 is durable (frontier 7):
		{"d=0 keeps only newest below 7; tombstones at or before 6 dropped", 0,
			[]string{"s/a@6"}},
		{"d=2 keeps newest at or before 4 plus newer", 2 * time.Second,
			[]string{"s/a@4", "s/a@5", "s/a@6", "s/c@5=tomb"}},
		{"d=4 keeps newest at or before 2 plus newer", 3500 * time.Millisecond,
			[]string{"s/a@2", "s/a@3", "s/a@4", "s/a@5", "s/a@6", "s/b@2", "s/b@4=tomb", "s/c@5=tomb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := initDir(t, 1)
			st := openStore(t, dir, time.Second, tt.b)
			if _, err := st.Begin(ctx, 1); err != nil {
				t.Fatal(err)
			}
			rows := map[Epoch][]Row{
				1: {{Step: "s", Key: "a", Epoch: 1, Value: []byte("x")}},
				2: {{Step: "s", Key: "a", Epoch: 2, Value: []byte("x")}, {Step: "s", Key: "b", Epoch: 2, Value: []byte("x")}},
				3: {{Step: "s", Key: "a", Epoch: 3, Value: []byte("x")}},
				4: {{Step: "s", Key: "a", Epoch: 4, Value: []byte("x")}, {Step: "s", Key: "b", Epoch: 4, Value: nil}},
				5: {{Step: "s", Key: "a", Epoch: 5, Value: []byte("x")}, {Step: "s", Key: "c", Epoch: 5, Value: nil}},
				6: {{Step: "s", Key: "a", Epoch: 6, Value: []byte("x")}},
			}
			for e := Epoch(1); e <= 6; e++ {
				if err := st.Commit(ctx, 0, e+1, rows[e]); err != nil {
					t.Fatal(err)
				}
			}
			// One more (empty) commit: GC runs against what was durable before it.
			st.Commit(ctx, 0, 7, nil)
			// Compaction runs every few epochs, in slices; here, at once.
			if err := st.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			st = openStore(t, dir, time.Second, tt.b)
			defer st.Close()
			if got := rowsOf(t, st); strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("rows = %v\nwant   %v", got, tt.want)
			}
			v, _ := ReadView(ctx, st.parts[0].DB)
			if wantC := 7 - (Intervals{time.Second, tt.b}).D(); v.CommitEpoch != wantC {
				t.Fatalf("commit epoch = %d, want %d", v.CommitEpoch, wantC)
			}
		})
	}
}

func TestGC_TooOldToResume(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 2)
	st := openStore(t, dir, time.Second, 0)
	st.Begin(ctx, 1)
	for e := Epoch(1); e <= 5; e++ {
		st.Commit(ctx, 0, e+1, []Row{{Step: "s", Key: StateKey(fmt.Sprint("k", e)), Epoch: e, Value: []byte("v")}})
	}
	st.Close()
	// Simulate restoring an old backup of partition 1: roll its frontiers back.
	p1 := st.parts[1].Path
	db, _ := OpenDB(p1, false)
	db.Exec(`UPDATE fronts SET frontier = 2`)
	db.Exec(`UPDATE meta SET value = '1' WHERE key = 'commit_epoch'`)
	db.Close()
	_, err := Open(ctx, dir, Options{FlowName: "f"})
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := Open(ctx, dir, Options{FlowName: "f"})
	defer st2.Close()
	_, err = st2.Begin(ctx, 1)
	if !errors.Is(err, ErrTooOld) || !strings.Contains(err.Error(), "too old to resume from epoch 2 without data loss") || !strings.Contains(err.Error(), "restore a newer backup") {
		t.Fatalf("err = %v", err)
	}
}

func TestGC_FileSizeBoundedWithFixedKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	ctx := context.Background()
	dir := initDir(t, 1)
	st := openStore(t, dir, time.Second, 2*time.Second) // d = 2
	st.Begin(ctx, 1)
	const keys, epochs = 10000, 200
	val := []byte(strings.Repeat("v", 24))
	var sizeAt50 int64
	for e := Epoch(1); e <= epochs; e++ {
		rows := make([]Row, keys)
		for k := range rows {
			rows[k] = Row{Step: "wc.count", Key: StateKey(fmt.Sprintf("key-%05d", k)), Epoch: e, Value: val}
		}
		if err := st.Commit(ctx, 0, e+1, rows); err != nil {
			t.Fatal(err)
		}
		// Epochs last a snapshot interval: far longer than a commit.
		if err := st.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if e == 50 {
			st.Close()
			sizeAt50 = fileSize(filepath.Join(dir, "part-0.sqlite3"))
			st = openStore(t, dir, time.Second, 2*time.Second)
			st.Begin(ctx, 1)
		}
	}
	st.Close()
	size := fileSize(filepath.Join(dir, "part-0.sqlite3"))
	// Live data: the base (10k keys, ~45 B each with B-tree slack) plus the
	// segments not yet compacted: at most CompactEvery+d+2 = 20 epochs of 10k
	// entries of ~36 B: about 7.7 MB. The bound: 10 MiB, and no growth
	// between epoch 50 and 200.
	if size > 10<<20 {
		t.Fatalf("file is %d bytes after %d epochs of %d keys", size, epochs, keys)
	}
	if size > sizeAt50*3/2 {
		t.Fatalf("file grew from %d (epoch 50) to %d (epoch 200)", sizeAt50, size)
	}
	t.Logf("size at epoch 50: %d, at epoch %d: %d", sizeAt50, epochs, size)
}

// A Begin that fails part-way leaves no writer running, and Close after it
// neither panics nor hangs.
func TestStore_CloseAfterAFailedBegin(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 3)
	st := openStore(t, dir, time.Second, 0)
	st.parts[2].DB.Close() // the third partition fails
	if _, err := st.Begin(ctx, 2); err == nil {
		t.Fatal("Begin on a closed partition succeeded")
	}
	done := make(chan error, 1)
	go func() { done <- st.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs after a failed Begin")
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Partition paths with ?, # or % are files in DIR, not URI syntax.
func TestStore_PathsWithURICharacters(t *testing.T) {
	ctx := context.Background()
	parent := t.TempDir()
	dir := filepath.Join(parent, "we?ird#dir%41")
	os.Mkdir(dir, 0o755)
	if err := Init(ctx, dir, 2); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, dir, time.Second, 0)
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(ctx, 0, 2, []Row{{Step: "s", Key: "k", Epoch: 1, Value: []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir, time.Second, 0)
	defer st.Close()
	rp, err := st.Begin(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := loadAll(t, st, rp.Epoch); got["s/k"] != "v" {
		t.Fatalf("loaded %v", got)
	}
	ents, _ := os.ReadDir(parent)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("files outside the recovery directory: %v", names)
	}
}

// A zero-length value is a value: only a tombstone means "no state".
func TestStore_ZeroLengthValueIsState(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 1)
	st := openStore(t, dir, time.Second, 0)
	st.Begin(ctx, 1)
	st.Commit(ctx, 0, 2, []Row{{Step: "s", Key: "empty", Epoch: 1, Value: []byte{}}, {Step: "s", Key: "gone", Epoch: 1, Value: []byte("x")}})
	st.Commit(ctx, 0, 3, []Row{{Step: "s", Key: "gone", Epoch: 2, Value: nil}})
	if err := st.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	st.Commit(ctx, 0, 4, []Row{{Step: "s", Key: "empty2", Epoch: 3, Value: []byte{}}})
	st.Close()
	st = openStore(t, dir, time.Second, 0)
	defer st.Close()
	rp, _ := st.Begin(ctx, 1)
	got := loadAll(t, st, rp.Epoch)
	if _, ok := got["s/empty"]; !ok || len(got) != 2 {
		t.Fatalf("loaded %v: want s/empty (from the base) and s/empty2 (from a segment)", got)
	}
}

// Commits racing Close are applied or refused (ErrClosed), never a panic
// ("send on closed channel") and never lost half-way.
func TestStore_CommitsRacingCloseAreAppliedOrRefused(t *testing.T) {
	ctx := context.Background()
	for trial := 0; trial < 20; trial++ {
		dir := initDir(t, 2)
		st := openStore(t, dir, time.Second, time.Hour)
		if _, err := st.Begin(ctx, 4); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for e := Epoch(1); e < 200; e++ {
					err := st.Commit(ctx, WorkerIndex(w), e+1, []Row{{Step: "s", Key: StateKey(fmt.Sprint(w, "-", e)), Epoch: e, Value: []byte("v")}})
					if errors.Is(err, ErrClosed) {
						return
					}
					if err != nil {
						t.Errorf("worker %d epoch %d: %v", w, e, err)
						return
					}
				}
			}(w)
		}
		time.Sleep(time.Duration(trial) * 100 * time.Microsecond)
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
}

// A commit waiting for room in the writers' budget wakes when the store
// fails, and when its context ends.
func TestStore_AWaitForRoomEndsWithAFailureOrTheContext(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 1)
	st, err := Open(ctx, dir, Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: time.Hour}, MaxPendingBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	st.pmu.Lock()
	st.pending = 1 << 30 // as if a huge commit were queued
	st.pmu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := st.reserve(cctx, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reserve with an ended context: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- st.reserve(ctx, 10) }()
	time.Sleep(20 * time.Millisecond)
	boom := errors.New("disk on fire")
	st.fail(boom)
	select {
	case err := <-done:
		if !errors.Is(err, boom) {
			t.Fatalf("reserve after a failure: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reserve did not wake when the store failed")
	}
	st.pmu.Lock()
	st.pending = 0
	st.pmu.Unlock()
}

// A store whose writes cannot go through (here another connection holds
// the partition locked, as a stuck disk would keep them) does not hang
// Shutdown past its context: it says so, and a later Close still makes
// the accepted commit durable once the writes can go through.
func TestStore_ShutdownIsBoundedByItsContext(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 1)
	st := openStore(t, dir, time.Second, time.Hour)
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	blocker, err := OpenDB(filepath.Join(dir, "part-0.sqlite3"), false)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := blocker.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(ctx, 0, 2, []Row{{Step: "s", Key: "k", Epoch: 1, Value: []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	if err := st.Shutdown(sctx); !errors.Is(err, ErrShutdownTimeout) || time.Since(began) > 5*time.Second {
		t.Fatalf("shutdown with the partition locked: %v after %v", err, time.Since(began))
	}
	if err := st.Commit(ctx, 0, 3, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("a commit after shutdown began: %v, want ErrClosed", err)
	}
	conn.ExecContext(ctx, "ROLLBACK")
	conn.Close()
	blocker.Close()
	if err := st.Close(); err != nil {
		t.Fatalf("close once the writes can go through: %v", err)
	}
	st = openStore(t, dir, time.Second, time.Hour)
	defer st.Close()
	if got := loadAll(t, st, 2); got["s/k"] != "v" {
		t.Fatalf("the accepted commit was lost: %v", got)
	}
}
