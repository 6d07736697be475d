package recovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/machine"
)

func TestAgreeUpTo(t *testing.T) {
	t0 := time.Unix(1e9, 0)
	a := RootLineage("aaaaaaaa", "h", t0, LineageInit)
	b := a.Child("bbbbbbbb", "h", 50, nil, t0, t0, LineageRestore) // b = a below 50
	c := b.Child("cccccccc", "h", 70, nil, t0, t0, LineageMoved)   // c = b below 70, = a below 50
	d := a.Child("dddddddd", "h", 30, nil, t0, t0, LineageRestore) // a sibling of b
	e := b.Child("eeeeeeee", "h", 40, nil, t0, t0, LineageRestore) // forked from b below a's fork
	other := RootLineage("ffffffff", "h", t0, LineageInit)
	tests := []struct {
		name string
		x, y Lineage
		want Epoch
	}{
		{"one lineage", b, b, MaxEpoch},
		{"parent and child: the fork", a, b, 50},
		{"child and parent (symmetric)", b, a, 50},
		{"grandchild and root: the lowest fork on the way", c, a, 50},
		{"grandchild and parent", c, b, 70},
		{"siblings: the lower of their forks", b, d, 30},
		{"cousins through a low fork", e, c, 40},
		{"unrelated", a, other, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := AgreeUpTo(tt.x, tt.y); got != tt.want {
				t.Fatalf("AgreeUpTo = %d, want %d", got, tt.want)
			}
		})
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := c
	bad.Fork = 3
	if err := bad.Validate(); err == nil {
		t.Fatal("a fork epoch that disagrees with the ancestry was accepted")
	}
}

func TestStartLineage(t *testing.T) {
	t0 := time.Unix(1e9, 0)
	a := RootLineage("aaaaaaaa", "old", t0, LineageInit)
	r1 := a.Child("11111111", "new", 40, nil, t0, t0, LineageRestore)
	r2 := a.Child("22222222", "new2", 40, nil, t0, t0, LineageRestore)
	r3 := a.Child("33333333", "new3", 41, nil, t0, t0, LineageRestore)
	b := a.Child("bbbbbbbb", "x", 9, nil, t0, t0, LineageMoved)
	v := func(i int, l Lineage, pending bool, moved string) *View {
		return &View{Index: PartitionIndex(i), Lineage: l, Pending: pending, Moved: moved}
	}
	newID := func() string { return "99999999" }
	tests := []struct {
		name    string
		views   []*View
		at      Epoch
		want    string // lineage id
		parent  string
		wantErr string
	}{
		{"the partitions' own", []*View{v(0, a, false, ""), v(1, a, false, "")}, 7, "aaaaaaaa", "", ""},
		{"moved: a child at the resume epoch", []*View{v(0, a, false, ""), v(1, a, false, "it was last run on another machine")}, 7, "99999999", "aaaaaaaa", ""},
		{"restored: adopt it", []*View{v(0, r1, true, ""), v(1, r1, true, "")}, 40, "11111111", "aaaaaaaa", ""},
		{"restored by two machines from one plan: the smaller id", []*View{v(0, r2, true, ""), v(1, r1, true, "moved")}, 40, "11111111", "aaaaaaaa", ""},
		{"one partition restored beside its parent's", []*View{v(0, a, false, ""), v(1, r1, true, "")}, 40, "11111111", "aaaaaaaa", ""},
		{"restored, and the first start crashed after one partition", []*View{v(0, r1, false, ""), v(1, r1, true, "")}, 40, "11111111", "aaaaaaaa", ""},
		{"restored by two machines, the first start crashed after one", []*View{v(0, r1, false, ""), v(1, r2, true, ""), v(2, a, false, "")}, 40, "11111111", "aaaaaaaa", ""},
		{"two histories", []*View{v(0, a, false, ""), v(1, b, false, "")}, 7, "", "", "partition 0 of lineage aaaaaaaa"},
		{"restored at two epochs", []*View{v(0, r1, true, ""), v(1, r3, true, "")}, 40, "", "", "restored at epoch 41"},
		{"restored beside another history", []*View{v(0, b, false, ""), v(1, r1, true, "")}, 40, "", "", "restored from aaaaaaaa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := StartLineage(tt.views, tt.at, newID, t0)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrTwoLineages) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Lineage.ID != tt.want || got.Lineage.Parent() != tt.parent {
				t.Fatalf("lineage %s (parent %s), want %s (parent %s)", got.Lineage.ID, got.Lineage.Parent(), tt.want, tt.parent)
			}
			if got.Lineage.Parent() != "" && got.Note == "" {
				t.Fatal("a new or adopted lineage says nothing")
			}
		})
	}
}

// beginAndClose runs one execution on dir and returns its lineage.
func beginAndClose(t *testing.T, dir string) LineageStart {
	t.Helper()
	st := openStore(t, dir, time.Second, time.Hour)
	if _, err := st.Begin(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	ls := st.Lineage()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return ls
}

func TestLineage_RestartKeepsItACopyForks(t *testing.T) {
	dir := initDir(t, 2)
	first := beginAndClose(t, dir)
	ps, err := Discover(context.Background(), dir, true, "")
	if err != nil {
		t.Fatal(err)
	}
	uid := ps[0].FlowUID
	CloseAll(ps)
	if first.Lineage.ID != uid || first.Note != "" {
		t.Fatalf("a fresh flow's lineage is %s (%q), want its uid %s", first.Lineage.ID, first.Note, uid)
	}
	if again := beginAndClose(t, dir); again.Lineage.ID != uid {
		t.Fatalf("a restart on the same files started lineage %s", again.Lineage.ID)
	}
	// A copy of the directory (the other machine, or a second copy here)
	// is not the files the last run wrote: a new history starts.
	cp := t.TempDir()
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		copyFile(t, filepath.Join(dir, n), filepath.Join(cp, n))
	}
	forked := beginAndClose(t, cp)
	if forked.Lineage.ID == uid || forked.Lineage.Parent() != uid || forked.Lineage.Reason != LineageMoved || !strings.Contains(forked.Note, "copy") {
		t.Fatalf("copied files: lineage %+v, note %q", forked.Lineage, forked.Note)
	}
	if again := beginAndClose(t, cp); again.Lineage.ID != forked.Lineage.ID {
		t.Fatalf("the copy's next run left its lineage: %s", again.Lineage.ID)
	}
	// The same files on another machine.
	t.Setenv(machine.IDEnv, "another machine")
	if moved := beginAndClose(t, dir); moved.Lineage.Parent() != uid || !strings.Contains(moved.Note, "another machine") {
		t.Fatalf("moved files: %+v %q", moved.Lineage, moved.Note)
	}
}

func TestLineage_TwoHistoriesInOneDirectoryAreRefused(t *testing.T) {
	dir := initDir(t, 2)
	beginAndClose(t, dir)
	cp := t.TempDir()
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		copyFile(t, filepath.Join(dir, n), filepath.Join(cp, n))
	}
	beginAndClose(t, cp) // the copy forks
	// Hand-mix: partition 1 of the copy beside partition 0 of the original.
	mixed := t.TempDir()
	copyFile(t, filepath.Join(dir, "part-0.sqlite3"), filepath.Join(mixed, "part-0.sqlite3"))
	copyFile(t, filepath.Join(cp, "part-1.sqlite3"), filepath.Join(mixed, "part-1.sqlite3"))
	st := openStore(t, mixed, time.Second, time.Hour)
	defer st.Close()
	_, err := st.Begin(context.Background(), 1)
	if !errors.Is(err, ErrTwoLineages) || !strings.Contains(err.Error(), "partition 0 of lineage") || !strings.Contains(err.Error(), "partition 1 of lineage") {
		t.Fatalf("mixed lineages: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mixed, "part-0.sqlite3")); err != nil {
		t.Fatal(err)
	}
}

func TestRunsAgree(t *testing.T) {
	r := func(n int, resume Epoch, id string) Run { return Run{N: ExecutionNumber(n), Resume: resume, ID: id} }
	base := []Run{r(0, 1, "a"), r(1, 10, "b"), r(2, 20, "c")}
	tests := []struct {
		name string
		a, b []Run
		want Epoch
	}{
		{"one run list", base, base, MaxEpoch},
		{"one extends the other: it resumed at 30 after the shared run", base, append(base[:3:3], r(3, 30, "d")), 30},
		{"rolled back to run 1 and run again: they part where the new run resumed", base, []Run{r(0, 1, "a"), r(1, 10, "b"), r(2, 15, "x")}, 15},
		{"parted at the older of the two next runs", []Run{r(0, 1, "a"), r(1, 12, "y")}, base, 10},
		{"no run in common", []Run{r(7, 70, "p")}, base, 0},
		{"backups older than runs", nil, base, MaxEpoch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RunsAgree(tt.a, tt.b); got != tt.want {
				t.Fatalf("RunsAgree = %d, want %d", got, tt.want)
			}
			if got := RunsAgree(tt.b, tt.a); got != tt.want {
				t.Fatalf("RunsAgree (reversed) = %d, want %d", got, tt.want)
			}
		})
	}
}

// A partition put back from an older copy (a snapshot copied over the
// file: same inode, same machine) did not take part in the others' runs:
// the run is refused. One that only missed a start that crashed before
// reaching it is fine.
func TestLineage_APartitionPutBackFromAnOlderCopyIsRefused(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 2)
	st := openStore(t, dir, time.Second, time.Hour)
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	st.Commit(ctx, 0, 3, []Row{{Step: "s", Key: "a", Epoch: 1, Value: []byte("1")}, {Step: "s", Key: "b", Epoch: 2, Value: []byte("2")}})
	st.Close()
	snap := filepath.Join(t.TempDir(), "part-0.sqlite3")
	copyFile(t, filepath.Join(dir, "part-0.sqlite3"), snap)
	for i := 0; i < 2; i++ {
		st := openStore(t, dir, time.Second, time.Hour)
		rp, err := st.Begin(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		st.Commit(ctx, 0, rp.Epoch+2, []Row{{Step: "s", Key: "a", Epoch: rp.Epoch, Value: []byte("later")}})
		st.Close()
	}
	// Put the old copy back over the file (its contents, same inode).
	b, _ := os.ReadFile(snap)
	if err := os.WriteFile(filepath.Join(dir, "part-0.sqlite3"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "part-0.sqlite3-wal"))
	os.Remove(filepath.Join(dir, "part-0.sqlite3-shm"))
	st = openStore(t, dir, time.Second, time.Hour)
	defer st.Close()
	_, err := st.Begin(ctx, 1)
	if !errors.Is(err, ErrTwoLineages) || !strings.Contains(err.Error(), "partition 0 did not take part in the last runs") {
		t.Fatalf("a partition put back from an older copy: %v", err)
	}
}

// A start that crashed after recording its run in partition 0 only left
// partition 1 one run behind, with no progress missed: the next run goes on.
func TestLineage_AStartThatCrashedHalfwayIsNotARollback(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 2)
	st := openStore(t, dir, time.Second, time.Hour)
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	st.Commit(ctx, 0, 3, []Row{{Step: "s", Key: "a", Epoch: 1, Value: []byte("1")}})
	st.Close()
	st = openStore(t, dir, time.Second, time.Hour)
	views, _ := st.Views(ctx)
	rp, _ := Resume(views)
	st.UseLineage(LineageStart{Lineage: views[0].Lineage, Run: "half"})
	if err := st.beginPartition(ctx, st.parts[0], rp, 1, unixMs(time.Now())); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = openStore(t, dir, time.Second, time.Hour)
	defer st.Close()
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatalf("after a start that reached one partition: %v", err)
	}
}

// The first start after a restore records the restored lineage on each
// partition in turn. Killed after the first, the directory must still
// start (it is one history: nothing ran), and so must the starts after.
func TestLineage_AFirstStartAfterARestoreThatCrashedHalfwayResumes(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 2)
	st := openStore(t, dir, time.Second, time.Hour)
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	st.Commit(ctx, 0, 3, []Row{{Step: "s", Key: "a", Epoch: 1, Value: []byte("1")}, {Step: "s", Key: "b", Epoch: 2, Value: []byte("2")}})
	st.Close()
	// What restore leaves: every partition of one child lineage, pending.
	st = openStore(t, dir, time.Second, time.Hour)
	views, _ := st.Views(ctx)
	rp, _ := Resume(views)
	st.Close()
	t0 := time.Now()
	child := views[0].Lineage.Child("c0ffee11", "new", rp.Epoch, views[0].Runs, t0, t0, LineageRestore)
	for _, v := range views {
		path := filepath.Join(dir, fmt.Sprintf("part-%d.sqlite3", v.Index))
		db, err := OpenDB(path, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := MarkRestored(ctx, db, child, path); err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
	// The first start, killed after it reached partition 0.
	st = openStore(t, dir, time.Second, time.Hour)
	views, _ = st.Views(ctx)
	rp, _ = Resume(views)
	ls, err := StartLineage(views, rp.Epoch, NewLineageID, t0)
	if err != nil {
		t.Fatal(err)
	}
	st.UseLineage(ls)
	if err := st.beginPartition(ctx, st.parts[0], rp, 1, unixMs(t0)); err != nil {
		t.Fatal(err)
	}
	st.Close()
	for i := 0; i < 2; i++ {
		st = openStore(t, dir, time.Second, time.Hour)
		got, err := st.Begin(ctx, 1)
		if err != nil {
			t.Fatalf("start %d after the half-way one: %v", i+1, err)
		}
		if st.Lineage().Lineage.ID != child.ID || got.Epoch != rp.Epoch {
			t.Fatalf("start %d: lineage %s at epoch %d, want the restored %s at %d", i+1, st.Lineage().Lineage.ID, got.Epoch, child.ID, rp.Epoch)
		}
		if state := loadAll(t, st, got.Epoch); state["s/a"] != "1" || state["s/b"] != "2" {
			t.Fatalf("start %d: state %v", i+1, state)
		}
		st.Close()
	}
}

func TestInit_StartsTheRootLineage(t *testing.T) {
	dir := initDir(t, 2)
	ps, err := Discover(context.Background(), dir, true, "")
	if err != nil {
		t.Fatal(err)
	}
	defer CloseAll(ps)
	for _, p := range ps {
		l, pending, err := ReadLineage(context.Background(), p.DB)
		if err != nil || pending || l.ID != p.FlowUID || l.Reason != LineageInit || l.Host == "" {
			t.Fatalf("partition %d: lineage %+v pending %v err %v", p.Index, l, pending, err)
		}
	}
}
