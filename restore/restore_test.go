package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
)

// flow is a set of partitions written through a recovery.Store, backed up
// into a memstore.
type flow struct {
	t   *testing.T
	dir string
	st  *recovery.Store
	s   *memstore.Store
	e   recovery.Epoch
	// tick, if set, moves the partitions' clock before each epoch.
	tick func()
}

func newFlow(t *testing.T, parts int, s *memstore.Store) *flow {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	if err := recovery.Init(ctx, dir, parts); err != nil {
		t.Fatal(err)
	}
	st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "t", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f := &flow{t: t, dir: dir, st: st, s: s, e: 1}
	t.Cleanup(func() { st.Close() })
	return f
}

// epoch writes keys k0..k(n-1) with a value naming the epoch, and closes it.
func (f *flow) epoch(n int) {
	e := f.e
	f.epochOf(n, func(i int) (string, string) { return fmt.Sprint("k", i), fmt.Sprint("v", e) })
}

// epochOf writes n keys and values, kv(i) giving the i-th, and closes the
// epoch.
func (f *flow) epochOf(n int, kv func(i int) (key, value string)) {
	if f.tick != nil {
		f.tick()
	}
	rows := make([]recovery.Row, n)
	for i := range rows {
		k, v := kv(i)
		rows[i] = recovery.Row{Step: "t.s", Key: recovery.StateKey(k), Epoch: f.e, Value: []byte(v)}
	}
	ctx := context.Background()
	if err := f.st.Commit(ctx, 0, f.e+1, rows); err != nil {
		f.t.Fatal(err)
	}
	if err := f.st.Flush(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.e++
}

func (f *flow) backupPart(i int) *backup.Manifest {
	f.t.Helper()
	r := backup.BackupPartition(context.Background(), f.s, f.st.Partitions()[i], backup.Options{})
	if r.Err != nil {
		f.t.Fatal(r.Err)
	}
	return r.Manifest
}

func (f *flow) backupAll() []*backup.Manifest {
	var out []*backup.Manifest
	for i := range f.st.Partitions() {
		out = append(out, f.backupPart(i))
	}
	return out
}

func loadDir(t *testing.T, dir string) (recovery.Epoch, map[string]string) {
	t.Helper()
	ctx := context.Background()
	st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "t", Intervals: recovery.Intervals{Snapshot: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rp, err := st.Begin(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	var mu = make(chan struct{}, 1)
	err = st.Load(ctx, rp.Epoch, func(rows []recovery.Row) error {
		mu <- struct{}{}
		for _, r := range rows {
			got[string(r.Key)] = string(r.Value)
		}
		<-mu
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rp.Epoch, got
}

func TestRestore_LatestOverlapResumesExactlyThere(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 3, s)
	f.epoch(50)
	f.epoch(50)
	f.backupAll()
	f.epoch(50)
	f.epoch(50)
	f.backupAll()
	dst := filepath.Join(t.TempDir(), "new")
	res, err := Restore(context.Background(), s, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Plan.Epoch != 5 {
		t.Fatalf("restored epoch %d, want 5", res.Plan.Epoch)
	}
	e, got := loadDir(t, dst)
	if e != 5 || got["k7"] != "v4" || len(got) != 50 {
		t.Fatalf("resumed at %d with k7=%q (%d keys)", e, got["k7"], len(got))
	}
}

// A backup that is a delta over an older base restores to the same state as
// a full image would, as a sound partition in the WAL mode flowrun uses.
func TestRestore_DeltaOverBase(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(200)
	f.epoch(200)
	f.backupAll()
	f.epoch(10)
	f.epoch(10)
	f.backupAll()
	dst := filepath.Join(t.TempDir(), "new")
	res, err := Restore(context.Background(), s, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The second backups are deltas: check the test restores what it means to.
	for p, m := range res.Plan.Chosen {
		if m.Delta == nil {
			t.Fatalf("partition %d: backup %s has no delta; the test means to restore one", p, m.ID)
		}
		path := filepath.Join(dst, fmt.Sprintf("part-%d.sqlite3", p))
		if err := IntegrityCheck(context.Background(), path); err != nil {
			t.Fatal(err)
		}
		hdr := make([]byte, 20)
		fh, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = fh.ReadAt(hdr, 0)
		fh.Close()
		if err != nil || hdr[18] != 2 || hdr[19] != 2 {
			t.Fatalf("partition %d is not in WAL mode (header bytes %v, %v)", p, hdr[18:20], err)
		}
	}
	e, got := loadDir(t, dst)
	if e != 5 || got["k7"] != "v4" || got["k150"] != "v2" || len(got) != 200 {
		t.Fatalf("resumed at %d with k7=%q k150=%q (%d keys)", e, got["k7"], got["k150"], len(got))
	}
}

func TestRestore_CorruptChosenBackupFallsBack(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(30)
	f.backupAll()
	f.epoch(30)
	newest := f.backupAll()
	// Flip a bit in a chunk only the newest backup of partition 1 uses.
	target := newest[1].Objects()[len(newest[1].Objects())-1]
	if !s.Mutate(backup.ChunkKey(target.SHA256), func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b }) {
		t.Fatal("no such chunk")
	}
	var notes []string
	res, err := Restore(context.Background(), s, filepath.Join(t.TempDir(), "r"), Options{Note: func(n string) { notes = append(notes, n) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Plan.Epoch != 2 || len(res.Fallbacks) != 1 || !strings.Contains(notes[0], newest[1].ID) || !strings.Contains(notes[0], "fell back from epoch 3 to epoch 2") {
		t.Fatalf("epoch %d, fallbacks %v", res.Plan.Epoch, res.Fallbacks)
	}
}

func TestRestore_RefusesOccupiedDirUnlessForce(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(5)
	f.backupAll()
	dst := t.TempDir()
	os.WriteFile(filepath.Join(dst, "part-0.sqlite3"), []byte("old"), 0o644)
	_, err := Restore(context.Background(), s, dst, Options{})
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "part-0.sqlite3")); string(b) != "old" {
		t.Fatal("old file changed without --force")
	}
	if _, err := Restore(context.Background(), s, dst, Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	kept, _ := filepath.Glob(filepath.Join(dst, "part-0.sqlite3.replaced-*"))
	if len(kept) != 1 {
		t.Fatalf("old partition not kept aside: %v", kept)
	}
}

func TestRestore_SubsetForOneMachine(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 4, s)
	f.epoch(20)
	f.backupAll()
	a, b := t.TempDir(), t.TempDir()
	if _, err := Restore(context.Background(), s, a, Options{Partitions: []int{0, 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(context.Background(), s, b, Options{Partitions: PartitionsForProcess(1, 2, 4)}); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string][]string{a: {"part-0.sqlite3", "part-1.sqlite3"}, b: {"part-1.sqlite3", "part-3.sqlite3"}} {
		got, _ := filepath.Glob(filepath.Join(dir, "*.sqlite3"))
		for i := range got {
			got[i] = filepath.Base(got[i])
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%v, want %v", got, want)
		}
	}
}

func TestPlan_TooFarApartExplainsWhichAndWhat(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 2, s) // b = 2s at s = 1s: d = 2
	f.epoch(10)
	f.backupPart(0) // epochs 1..2
	for i := 0; i < 6; i++ {
		f.epoch(10)
	}
	f.backupPart(1) // lo = 8-2 = 6 > 2
	_, err := PlanFrom(context.Background(), s, PlanOptions{})
	if !errors.Is(err, ErrNotRestorable) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"partition 1's backups start at epoch ", "partition 0's end at epoch 2", "-b 2s", "longer -b"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
}

func TestVerify_Findings(t *testing.T) {
	ctx := context.Background()
	type check func(t *testing.T, s *memstore.Store, f *flow, ms []*backup.Manifest)
	tests := []struct {
		name    string
		deep    bool
		damage  check
		status  string
		problem string
	}{
		{"healthy", false, func(*testing.T, *memstore.Store, *flow, []*backup.Manifest) {}, StatusHealthy, ""},
		{"bit flip found by deep", true, func(t *testing.T, s *memstore.Store, _ *flow, ms []*backup.Manifest) {
			s.Mutate(backup.ChunkKey(ms[1].Base.Chunks[0].SHA256), func(b []byte) []byte { b[3] ^= 1; return b })
		}, StatusDegraded, "corrupt backup object"},
		{"truncated chunk", false, func(t *testing.T, s *memstore.Store, _ *flow, ms []*backup.Manifest) {
			s.Mutate(backup.ChunkKey(ms[0].Base.Chunks[0].SHA256), func(b []byte) []byte { return b[:len(b)-5] })
		}, StatusDegraded, "truncated"},
		{"missing chunk", false, func(t *testing.T, s *memstore.Store, _ *flow, ms []*backup.Manifest) {
			s.Delete(ctx, backup.ChunkKey(ms[2].Objects()[0].SHA256))
		}, StatusDegraded, "is missing"},
		{"missing partition", false, func(t *testing.T, s *memstore.Store, f *flow, ms []*backup.Manifest) {
			s.List(ctx, "manifests/", "", func(o backup.ObjectInfo) error {
				if strings.Contains(o.Key, "part-0002") {
					s.Delete(ctx, o.Key)
				}
				return nil
			})
		}, StatusNotRestorable, "partitions 2 have no usable backup"},
		{"two flows in one prefix", false, func(t *testing.T, s *memstore.Store, _ *flow, _ []*backup.Manifest) {
			g := newFlow(t, 1, s)
			g.epoch(3)
			g.backupAll()
		}, StatusDegraded, "backups of 2 flows share this location"},
		{"malicious manifest", false, func(t *testing.T, s *memstore.Store, _ *flow, ms []*backup.Manifest) {
			m := *ms[0]
			m.ID = "20991231T000000.000Z-deadbeef"
			m.Base.Chunks = append([]backup.Object(nil), m.Base.Chunks...)
			m.Base.Chunks[0].SHA256 = "../../../../../etc/passwd"
			b, _ := m.Marshal()
			s.Put(ctx, backup.ManifestKey(m.Flow.UID, 0, m.ID), b)
		}, StatusDegraded, "unreadable manifest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := memstore.New()
			f := newFlow(t, 3, s)
			f.epoch(40)
			f.backupAll()
			f.epoch(40)
			ms := f.backupAll()
			tt.damage(t, s, f, ms)
			rep, err := Verify(ctx, s, VerifyOptions{Deep: tt.deep})
			if err != nil {
				t.Fatal(err)
			}
			var msgs []string
			for _, p := range rep.Problems {
				msgs = append(msgs, p.Message)
			}
			if rep.Status != tt.status || (tt.problem != "" && !strings.Contains(strings.Join(msgs, "|"), tt.problem)) {
				t.Fatalf("status %s, problems %v; want %s with %q", rep.Status, msgs, tt.status, tt.problem)
			}
			if tt.status == StatusDegraded && tt.name != "two flows in one prefix" {
				if !rep.Flows[0].Restorable {
					t.Fatal("not restorable despite an older overlap")
				}
			}
		})
	}
}

func TestVerify_MaxAge(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(3)
	f.backupAll()
	rep, err := Verify(context.Background(), s, VerifyOptions{MaxAge: time.Minute, Now: func() time.Time { return time.Now().Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusDegraded || !strings.Contains(rep.Problems[0].Message, "RPO") {
		t.Fatalf("%+v", rep)
	}
	if rep.Flows[0].AgeSeconds < 3500 {
		t.Fatalf("age %v", rep.Flows[0].AgeSeconds)
	}
}

// restore --partitions 2,3 --force replaces partitions 2 and 3 only: the
// other partitions in the directory stay where they are.
func TestRestore_ForceOfASubsetTouchesOnlyThoseParts(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 4, s)
	f.epoch(20)
	f.backupAll()
	dir := t.TempDir()
	if _, err := Restore(ctx, s, dir, Options{}); err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		before[n] = b
	}
	if _, err := Restore(ctx, s, dir, Options{Partitions: []int{2, 3}, Force: true}); err != nil {
		t.Fatal(err)
	}
	moved, _ := filepath.Glob(filepath.Join(dir, "*.replaced-*"))
	for _, m := range moved {
		if n := filepath.Base(m); !strings.HasPrefix(n, "part-2.") && !strings.HasPrefix(n, "part-3.") {
			t.Fatalf("--partitions 2,3 --force moved %s aside", n)
		}
	}
	if len(moved) == 0 {
		t.Fatal("the replaced partitions were not kept aside")
	}
	for n, b := range before {
		if now, err := os.ReadFile(filepath.Join(dir, n)); err != nil || string(now) != string(b) {
			t.Fatalf("%s changed (%v)", n, err)
		}
	}
}

// codedErr is an error carrying a SQLite result code, as the driver's.
type codedErr int

func (c codedErr) Error() string { return fmt.Sprintf("sqlite error %d", int(c)) }
func (c codedErr) Code() int     { return int(c) }

// NoRoom tells a disk that filled up (the write's ENOSPC, or SQLite's
// SQLITE_FULL, extended codes too) from other failures: verify exits 3 for
// those, not 1 as for damaged backups.
func TestNoRoom_TellsAFullDiskFromOtherErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("write image: %w", syscall.ENOSPC), true},
		{fmt.Errorf("apply delta: %w", codedErr(13)), true},
		{fmt.Errorf("backup x: %w", codedErr(13|1<<8)), true},
		{fmt.Errorf("read: %w", syscall.EIO), false},
		{fmt.Errorf("%w: malformed", codedErr(11)), false},
		{backup.ErrCorrupt, false},
		{nil, false},
	} {
		if got := NoRoom(tc.err); got != tc.want {
			t.Errorf("NoRoom(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
