package recovery

import (
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

//go:generate go run ./testdata/gen -o testdata

// v1History is the history testdata/gen wrote the schema-1 golden files
// from (a copy: the files must not depend on the code they test). nil is a
// tombstone, "" a zero-length value.
func v1History() *flowModel {
	v := func(s string) []byte { return []byte(s) }
	m := newModel()
	m.apply([]Row{
		{Step: "wc.count", Key: "c", Epoch: 1, Value: v("c1")}, {Step: "wc.count", Key: "f", Epoch: 1, Value: v("f1")}, {Step: "win.sum", Key: "w1", Epoch: 1, Value: v("w1")},
		{Step: "wc.count", Key: "a", Epoch: 2, Value: v("a2")}, {Step: "win.sum", Key: "gone", Epoch: 2, Value: v("g2")},
		{Step: "wc.count", Key: "b", Epoch: 3, Value: v("b3")}, {Step: "win.sum", Key: "gone", Epoch: 3, Value: nil},
		{Step: "wc.count", Key: "d", Epoch: 4, Value: v("")}, {Step: "wc.count", Key: "f", Epoch: 4, Value: nil},
		{Step: "wc.count", Key: "a", Epoch: 5, Value: v("a5")}, {Step: "wc.count", Key: "c", Epoch: 5, Value: nil}, {Step: "wc.count", Key: "e", Epoch: 5, Value: v("")},
		{Step: "wc.count", Key: "a", Epoch: 6, Value: v("a6")}, {Step: "wc.count", Key: "c", Epoch: 6, Value: v("c6")}, {Step: "wc.count", Key: "d", Epoch: 6, Value: nil}, {Step: "wc.count", Key: "f", Epoch: 6, Value: v("f6")}, {Step: "wc.count", Key: "h", Epoch: 6, Value: v("h6")},
		{Step: "wc.count", Key: "h", Epoch: 7, Value: nil}, {Step: "win.sum", Key: "w1", Epoch: 7, Value: v("w1.7")},
		{Step: "wc.count", Key: "b", Epoch: 8, Value: v("b8")},
		{Step: "wc.count", Key: "a", Epoch: 9, Value: v("a9")},
	})
	return m
}

// golden copies testdata/name into a new directory as part-0.sqlite3 and
// returns its path.
func golden(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "part-0.sqlite3")
	copyPartition(t, filepath.Join("testdata", name), path)
	return path
}

// goldenOpts are the golden flow's: s = 1s, b = 2s (d = 2).
var goldenOpts = Options{FlowName: "golden", Intervals: Intervals{Snapshot: time.Second, Backup: 2 * time.Second}, CompactEvery: 2}

// A schema-1 partition migrates to schema 2 on its first writable open and
// keeps what it said before: its resume point, its restorable range and,
// for every epoch of the range, its state (zero-length values included);
// its dropped keys carry over. The next run resumes there and runs on.
func TestMigrate_V1GoldenPartitionsKeepResumeRangeAndState(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		file           string
		lo, hi         Epoch
		lastEx         ExecutionNumber
		history        Epoch // epochs below it exist in the file
		dropped        int
		segments, base int
	}{
		// commit epoch 4: a, b, c, f, w1 collapse into the base; d, f,
		// a, c, e of epochs 4 and 5 become segments.
		{file: "v1-image.sqlite3", lo: 4, hi: 6, lastEx: 0, history: 6, dropped: 1, segments: 2, base: 5},
		// commit epoch 7, resume 9 (worker 1 stopped at 9, worker 0 wrote
		// epoch 9 too): the rows of epochs 7, 8 and 9 become segments.
		{file: "v1-partition.sqlite3", lo: 7, hi: 9, lastEx: 1, history: 10, dropped: 4, segments: 3, base: 7},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			m := v1History()
			m.resume(tt.history)
			path := golden(t, tt.file)
			ro, err := OpenPartition(ctx, path, true)
			if err != nil {
				t.Fatal(err)
			}
			before := mustView(t, ro.DB)
			if v, _ := SchemaOf(ctx, ro.DB); v != 1 || before.Lo() != tt.lo || before.Hi() != tt.hi {
				t.Fatalf("golden file: schema %d, range [%d, %d]; want 1, [%d, %d]", v, before.Lo(), before.Hi(), tt.lo, tt.hi)
			}
			ro.Close()

			p, err := OpenPartition(ctx, path, false) // migrates
			if err != nil {
				t.Fatal(err)
			}
			after := mustView(t, p.DB)
			if v, _ := SchemaOf(ctx, p.DB); v != SchemaVersion {
				t.Fatalf("schema %d after a writable open, want %d", v, SchemaVersion)
			}
			if after.Lo() != tt.lo || after.Hi() != tt.hi || after.Last().Number != tt.lastEx || len(after.Executions) != len(before.Executions) {
				t.Fatalf("migrated: range [%d, %d], last execution %d of %d; was [%d, %d], %d of %d",
					after.Lo(), after.Hi(), after.Last().Number, len(after.Executions), tt.lo, tt.hi, before.Last().Number, len(before.Executions))
			}
			checkRange(t, "migrated", p.DB, m, 0, 1, tt.lo, tt.hi)
			var dropped, segments, base, old int
			p.DB.QueryRow(`SELECT (SELECT count(*) FROM dropped), (SELECT count(DISTINCT epoch) FROM segments), (SELECT count(*) FROM base),
				(SELECT count(*) FROM sqlite_master WHERE name IN ('snaps', 'changelog', 'dropped_v1'))`).Scan(&dropped, &segments, &base, &old)
			if dropped != tt.dropped || segments != tt.segments || base != tt.base || old != 0 {
				t.Fatalf("migrated: %d dropped keys, segments of %d epochs, %d base rows, %d version-1 tables; want %d, %d, %d, 0",
					dropped, segments, base, old, tt.dropped, tt.segments, tt.base)
			}
			if c, _ := metaEpoch(ctx, p.DB, "compacted_epoch"); c != tt.lo {
				t.Fatalf("compacted epoch %d, want the commit epoch %d", c, tt.lo)
			}
			p.Close()

			f := &testFlow{t: t, dir: filepath.Dir(path), opts: goldenOpts, m: m, wl: &workload{r: rand.New(rand.NewSource(1)), keys: 10}}
			f.open()
			if f.next != tt.hi {
				t.Fatalf("the run after the migration resumed at %d, want %d", f.next, tt.hi)
			}
			if d := diffState(partState(t, f.st.parts[0].DB, tt.hi), m.below(tt.hi, 0, 1)); d != "" {
				t.Fatalf("resumed at %d: %s", tt.hi, d)
			}
			f.run(tt.hi + 6)
			if err := f.st.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			f.run(tt.hi + 8)
			v := mustView(t, f.st.parts[0].DB)
			checkRange(t, "migrated and run on", f.st.parts[0].DB, m, 0, 1, v.Lo(), v.Hi())
			f.close()
		})
	}
}

// Trim on a schema-1 partition (a restored old image) migrates it first and
// then trims: the next run resumes at the epoch with its state.
func TestMigrate_TrimMigratesAV1PartitionFirst(t *testing.T) {
	ctx := context.Background()
	for e := Epoch(7); e <= 9; e++ {
		path := golden(t, "v1-partition.sqlite3")
		db, err := OpenDB(path, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := Trim(ctx, db, e, 2, time.Now()); err != nil {
			t.Fatalf("trim to %d: %v", e, err)
		}
		if v, _ := SchemaOf(ctx, db); v != SchemaVersion {
			t.Fatalf("trim left schema %d", v)
		}
		db.Close()
		m := v1History()
		f := &testFlow{t: t, dir: filepath.Dir(path), opts: goldenOpts, m: m, wl: &workload{r: rand.New(rand.NewSource(1)), keys: 10}}
		f.open()
		if f.next != e {
			t.Fatalf("trimmed to %d, resumed at %d", e, f.next)
		}
		if d := diffState(partState(t, f.st.parts[0].DB, e), m.below(e, 0, 1)); d != "" {
			t.Fatalf("trimmed to %d: %s", e, d)
		}
		f.close()
	}
}

// A schema-1 image with a schema-1 delta (an old backup: base and delta
// made before schema 2) restores like `flowbackup restore` does it: the
// image migrated, the delta laid over it. The result has the later
// partition's range and, for every epoch of it, its state; trimmed to each,
// it resumes there and runs on.
func TestMigrate_V1ImageWithV1Delta(t *testing.T) {
	out := filepath.Join(t.TempDir(), "restored.sqlite3")
	layDelta(t, filepath.Join("testdata", "v1-image.sqlite3"), filepath.Join("testdata", "v1-delta.sqlite3"), 6, out)
	db, err := OpenDB(out, true)
	if err != nil {
		t.Fatal(err)
	}
	v := mustView(t, db)
	if v.Lo() != 7 || v.Hi() != 9 || v.Last().Number != 1 {
		t.Fatalf("restored: range [%d, %d], last execution %d; want [7, 9], 1", v.Lo(), v.Hi(), v.Last().Number)
	}
	m := v1History()
	checkRange(t, "v1 image + v1 delta", db, m, 0, 1, 7, 9)
	db.Close()
	runRestored(t, 1, goldenOpts, func(int) string { return out }, m)
}

// Files that are not partitions of this flowkeep are refused, never
// misread: one of a newer schema (upgrade flowkeep), a truncated one, one
// whose parts row claims an impossible index, and garbage (ErrCorrupt).
// The error names the file.
func TestMigrate_BrokenGoldenFilesAreRefused(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		file    string
		corrupt bool   // errors.Is(err, ErrCorrupt)
		want    string // and the error says this
	}{
		{file: "v3-newer.sqlite3", want: "schema version 3 is newer than this flowkeep (2): upgrade flowkeep"},
		{file: "truncated.sqlite3", corrupt: true},
		{file: "bad-index.sqlite3", corrupt: true, want: "claims to be partition 5 of 2"},
		{file: "garbage.sqlite3", corrupt: true},
	}
	check := func(t *testing.T, what, path string, err error, corrupt bool, want string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error", what)
		}
		t.Logf("%s: %v", what, err)
		if corrupt && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: %v, want ErrCorrupt", what, err)
		}
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Fatalf("%s: %q, want it to say %q and name %s", what, err, want, path)
		}
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := golden(t, tt.file)
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			_, err = OpenPartition(ctx, path, false)
			check(t, "writable open", path, err, tt.corrupt, tt.want)
			_, err = Discover(ctx, filepath.Dir(path), false, "")
			check(t, "discover", path, err, tt.corrupt, tt.want)
			if tt.corrupt {
				_, err = OpenPartition(ctx, path, true)
				check(t, "read-only open", path, err, true, tt.want)
				_, err = InspectDir(ctx, filepath.Dir(path), InspectOptions{})
				check(t, "inspect", path, err, true, tt.want)
			} else {
				// Read-only opens do not migrate: inspection says what to do.
				_, err = InspectDir(ctx, filepath.Dir(path), InspectOptions{})
				check(t, "inspect", path, err, false, "upgrade flowkeep")
			}
			if err := Init(ctx, filepath.Dir(path), 1); !errors.Is(err, ErrAlreadyInit) {
				t.Fatalf("init over it: %v, want ErrAlreadyInit", err)
			}
			if now, err := os.ReadFile(path); err != nil || string(now) != string(orig) {
				t.Fatalf("a refused file was changed (%v)", err)
			}
			for _, suf := range []string{"-wal", "-shm"} {
				if _, err := os.Stat(path + suf); err == nil {
					t.Fatalf("a refused file got a %s", suf)
				}
			}
			if !tt.corrupt {
				// What restore does with an image: open it for writing
				// (that sets WAL mode), trim, which migrates first.
				db, err := OpenDB(path, false)
				if err != nil {
					t.Fatal(err)
				}
				err = Trim(ctx, db, 8, 2, time.Now())
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("trim: %v, want %q", err, tt.want)
				}
				if err := Migrate(ctx, db); err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("migrate: %v, want %q", err, tt.want)
				}
				if v, _ := SchemaOf(ctx, db); v != 3 {
					t.Fatalf("schema %d after a refused migration", v)
				}
				db.Close()
			}
		})
	}
}
