//go:build unix

package restore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// attackerUID is the service user of the outside attacker test (svc).
const attackerUID, attackerGID = 23456, 23456

// victimDB is a SQLite database of root's outside the target directory,
// alone in a directory of root's: the attack aims SQLite at it.
type victimDB struct {
	path  string
	data  []byte
	names []string // in its directory
}

func newVictimDB(t *testing.T) *victimDB {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "victimdb")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Exec(`CREATE TABLE secrets (k TEXT, v TEXT); INSERT INTO secrets VALUES ('root', 'only')`)
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	v := &victimDB{path: path}
	v.data, v.names = v.state(t)
	return v
}

func (v *victimDB) state(t *testing.T) ([]byte, []string) {
	t.Helper()
	b, err := os.ReadFile(v.path)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Dir(v.path))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return b, names
}

// unchanged fails unless the victim is byte for byte what it was, and
// nothing new (a -wal, a -shm, a -journal) appeared beside it.
func (v *victimDB) unchanged(t *testing.T) {
	t.Helper()
	b, names := v.state(t)
	if !bytes.Equal(b, v.data) {
		t.Errorf("the victim database outside the target changed: %d bytes, was %d", len(b), len(v.data))
	}
	if !slices.Equal(names, v.names) {
		t.Errorf("the victim's directory holds %v, was %v", names, v.names)
	}
}

// attackerDir is a directory of the service user's whose every name a
// restore might use in its private directory leads to the victim.
func attackerDir(t *testing.T, victim string) string {
	t.Helper()
	dir := t.TempDir()
	for i := 1; i <= 40; i++ {
		for p := range 4 {
			for _, n := range []string{"part-%d.sqlite3", "part-%d.sqlite3.delta", "part-%d.sqlite3-wal", "part-%d.sqlite3-journal"} {
				if err := os.Symlink(victim, filepath.Join(dir, fmt.Sprintf("%d.", i)+fmt.Sprintf(n, p))); err != nil {
					t.Fatal(err)
				}
			}
		}
		os.Symlink(victim, filepath.Join(dir, fmt.Sprintf("%d.chunk-key", i)))
	}
	if err := os.Chown(dir, attackerUID, attackerGID); err != nil {
		t.Fatal(err)
	}
	return dir
}

// swapWorkDir does what the owner of dst did to a restore run as root: it
// renames the restore's private directory away and puts a symlink to its
// own directory at the name. It returns how many it swapped.
func swapWorkDir(t *testing.T, dst, evil string) int {
	ents, err := os.ReadDir(dst)
	if err != nil {
		t.Error(err)
		return 0
	}
	n := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), workDirPrefix) || !e.IsDir() {
			continue
		}
		p := filepath.Join(dst, e.Name())
		if err := os.Rename(p, filepath.Join(dst, ".old"+e.Name())); err != nil {
			t.Error(err)
			continue
		}
		if err := os.Symlink(evil, p); err != nil {
			t.Error(err)
			continue
		}
		n++
	}
	return n
}

// onFirstChunk calls fn once, when the restore reads its first chunk: the
// private directory exists by then, and no image is complete.
type onFirstChunk struct {
	backup.Store
	once sync.Once
	fn   func()
}

func (s *onFirstChunk) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasPrefix(key, backup.ChunksPrefix) {
		s.once.Do(s.fn)
	}
	return s.Store.Get(ctx, key)
}

// The outside attacker test's finding: a restore run as root into a
// directory the service user owns made its private directory there and
// reached its images through it by name with SQLite (fetch's delta, the
// image checks, the trim, the new lineage). The service user renamed that
// directory and put at its name a symlink to a directory of its own whose
// entries led to a database of root's: root's SQLite wrote flowkeep tables
// into it. Whenever the swap comes (while the images download, or once
// they are all fetched and checked), nothing outside the target changes,
// and the restore either succeeds with the right state and owner or fails
// and says so.
func TestRestore_AsRootAWorkDirectorySwappedForASymlinkChangesNothingOutside(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the attack is on a restore run as root into another user's directory")
	}
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(200)
	f.backupAll()
	f.epoch(10)
	for _, m := range f.backupAll() {
		if m.Delta == nil {
			t.Fatalf("backup %s is not a delta: the test needs one laid over its base", m.ID)
		}
	}
	for _, when := range []string{"while fetching", "after fetching"} {
		t.Run(when, func(t *testing.T) {
			v := newVictimDB(t)
			evil := attackerDir(t, v.path)
			dst := t.TempDir()
			if err := os.Chown(dst, attackerUID, attackerGID); err != nil {
				t.Fatal(err)
			}
			swapped := 0
			var store backup.Store = s
			if when == "while fetching" {
				store = &onFirstChunk{Store: s, fn: func() { swapped += swapWorkDir(t, dst, evil) }}
			} else {
				testHookFetched = func(string) { swapped += swapWorkDir(t, dst, evil) }
				defer func() { testHookFetched = nil }()
			}
			tmp := t.TempDir()
			o := Options{Mode: 0o640, TempDir: tmp}.WithOwner(attackerUID, attackerGID)
			_, err := Restore(context.Background(), store, dst, o)
			t.Logf("restore: %v", err)
			emptyDir(t, tmp)
			if swapped == 0 {
				t.Fatal("the private directory was never swapped")
			}
			v.unchanged(t)
			if err != nil {
				if !strings.Contains(err.Error(), "run the restore again") {
					t.Fatalf("the restore failed without saying what to do: %v", err)
				}
				return
			}
			for p := range 2 {
				path := filepath.Join(dst, fmt.Sprintf("part-%d.sqlite3", p))
				st, err := os.Lstat(path)
				if err != nil {
					t.Fatal(err)
				}
				sys := st.Sys().(*syscall.Stat_t)
				if !st.Mode().IsRegular() || st.Mode().Perm() != 0o640 || sys.Uid != attackerUID || sys.Gid != attackerGID {
					t.Fatalf("%s: %v owned by %d:%d", path, st.Mode(), sys.Uid, sys.Gid)
				}
				recordsItsFile(t, path)
			}
			if e, got := loadDir(t, dst); e != 3 || got["k150"] != "v1" || got["k3"] != "v2" {
				t.Fatalf("restored epoch %d, k150=%q k3=%q", e, got["k150"], got["k3"])
			}
		})
	}
}

// emptyDir fails unless dir holds nothing (a restore's scratch directory
// is gone).
func emptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("%s left in %s", e.Name(), dir)
	}
}

// recordsItsFile fails unless the restored partition at path records its
// own file (device and inode) as where it was restored, not the scratch
// copy SQLite worked on: a run would take it for a copy.
func recordsItsFile(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var id string
	if err := db.QueryRow(`SELECT value FROM meta WHERE key = 'file_id'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if want := fmt.Sprintf("%d:%d", sys.Dev, sys.Ino); id != want {
		t.Fatalf("%s records file %q, it is %s", path, id, want)
	}
}

// otherUsersDir is a new directory owned by the attacker's uid.
func otherUsersDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chown(dir, attackerUID, attackerGID); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A restore as root into the service user's directory does its SQLite
// work in a scratch directory under TempDir, says so, and removes it;
// the partitions are right, given away as asked, and record their own
// files.
func TestRestore_AsRootIntoAnotherUsersDirectoryWorksInAScratch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to restore into another user's directory")
	}
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(200)
	f.backupAll()
	f.epoch(10)
	f.backupAll()
	dst, tmp := otherUsersDir(t), t.TempDir()
	var notes []string
	o := Options{Mode: 0o640, TempDir: tmp, Note: func(n string) { notes = append(notes, n) }}.WithOwner(attackerUID, attackerGID)
	if _, err := Restore(context.Background(), s, dst, o); err != nil {
		t.Fatal(err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "belongs to uid 23456") || !strings.Contains(notes[0], tmp) {
		t.Fatalf("notes: %q", notes)
	}
	emptyDir(t, tmp)
	ents, _ := os.ReadDir(dst)
	if len(ents) != 2 {
		t.Fatalf("the target holds %d entries, want the 2 partitions", len(ents))
	}
	for p := range 2 {
		path := filepath.Join(dst, fmt.Sprintf("part-%d.sqlite3", p))
		st, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if st.Mode().Perm() != 0o640 || sys.Uid != attackerUID || sys.Gid != attackerGID {
			t.Fatalf("%s: %v owned by %d:%d", path, st.Mode(), sys.Uid, sys.Gid)
		}
		recordsItsFile(t, path)
	}
	if e, got := loadDir(t, dst); e != 3 || got["k150"] != "v1" || got["k3"] != "v2" {
		t.Fatalf("restored epoch %d, k150=%q k3=%q", e, got["k150"], got["k3"])
	}
}

// A restore into a directory only its user can change writes each file
// once, in the directory: it never needs TempDir (here one that does not
// exist).
func TestRestore_IntoItsOwnDirectoryNeedsNoScratch(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(10)
	f.backupAll()
	dst := t.TempDir()
	var notes []string
	o := Options{TempDir: filepath.Join(t.TempDir(), "missing"), Note: func(n string) { notes = append(notes, n) }}
	if _, err := Restore(context.Background(), s, dst, o); err != nil {
		t.Fatal(err)
	}
	if len(notes) != 0 {
		t.Fatalf("notes: %q", notes)
	}
	for p := range 2 {
		recordsItsFile(t, filepath.Join(dst, fmt.Sprintf("part-%d.sqlite3", p)))
	}
}

// A scratch directory in a place another user can change is refused,
// with the flag that chooses another; nothing is restored.
func TestRestore_AnUnsafeTempDirIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to restore into another user's directory")
	}
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(10)
	f.backupAll()
	dst, tmp := otherUsersDir(t), otherUsersDir(t)
	_, err := Restore(context.Background(), s, dst, Options{TempDir: tmp})
	t.Log(err)
	if !errors.Is(err, ErrUnsafeTempDir) || !strings.Contains(err.Error(), "--temp-dir") || !strings.Contains(err.Error(), tmp+" belongs to uid 23456") {
		t.Fatalf("err = %v", err)
	}
	emptyDir(t, tmp)
	emptyDir(t, dst)
}

// A killed restore's scratch directory is removed by the next restore
// that needs one there; a running restore's (locked), another user's, and
// a symlink named like one are left alone.
func TestRestore_SweepsAKilledRestoresScratch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to restore into another user's directory")
	}
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(10)
	f.backupAll()
	tmp := t.TempDir()
	mk := func(name string, uid int) string {
		p := filepath.Join(tmp, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(p, "1.part-0.sqlite3"), []byte("junk"), 0o600)
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	killed := mk("flowkeep-restore-99999999-0123456789abcdef", 0)
	running := mk("flowkeep-restore-1-fedcba9876543210", 0)
	theirs := mk("flowkeep-restore-2-00112233", attackerUID)
	other := mk("flowkeep-restore-notes", 0)
	vdir := t.TempDir()
	os.WriteFile(filepath.Join(vdir, "keep"), []byte("keep"), 0o600)
	link := filepath.Join(tmp, "flowkeep-restore-3-44556677")
	os.Symlink(vdir, link)
	unlock, err := lockDir(running)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := Restore(context.Background(), s, otherUsersDir(t), Options{TempDir: tmp}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(killed); !os.IsNotExist(err) {
		t.Errorf("a killed restore's scratch directory is left: %v", err)
	}
	for _, p := range []string{running, theirs, other, link, filepath.Join(vdir, "keep")} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// With a scratch directory on the target's file system, each image takes
// twice its size there for a while: one that does not fit twice is passed
// over with the reason.
func TestRestore_AScratchCopyCountsInTheFreeSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to restore into another user's directory")
	}
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(10)
	small := f.backupAll()[0]
	f.epochOf(3000, func(i int) (string, string) { return fmt.Sprint("big", i), strings.Repeat("x", 200) })
	big := f.backupAll()[0]
	// The big image fits once, not twice.
	limit := uint64(big.Base.Size + big.Base.Size/2)
	if uint64(2*(small.Base.Size+4096)) > limit {
		t.Fatalf("the small backup (%d bytes) is too big for the test", small.Base.Size)
	}
	dst, tmp := otherUsersDir(t), t.TempDir()
	defer func(old func(string) (uint64, bool)) { freeSpace = old }(freeSpace)
	var asked []string
	freeSpace = func(dir string) (uint64, bool) {
		asked = append(asked, dir)
		return limit, true
	}
	res, err := Restore(context.Background(), s, dst, Options{TempDir: tmp})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.Fallbacks)
	if res.Plan.Chosen[0].ID != small.ID || len(res.Fallbacks) != 1 || !strings.Contains(res.Fallbacks[0], "2 times there") {
		t.Fatalf("restored %s, fallbacks %q", res.Plan.Chosen[0].ID, res.Fallbacks)
	}
	if !slices.Contains(asked, tmp) {
		t.Fatalf("free space asked of %q, not of the scratch directory's %s", asked, tmp)
	}
}

// The scratch directory is removed when a restore fails too (here its
// last step, the publish).
func TestRestore_AFailedRestoreRemovesItsScratch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to restore into another user's directory")
	}
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(10)
	f.backupAll()
	dst, tmp := otherUsersDir(t), t.TempDir()
	injected := errors.New("injected failure")
	real := renameat
	renameat = func(fromDir *os.File, from string, toDir *os.File, to string) error {
		if to == "part-1.sqlite3" {
			return injected
		}
		return real(fromDir, from, toDir, to)
	}
	defer func() { renameat = real }()
	if _, err := Restore(context.Background(), s, dst, Options{TempDir: tmp}); !errors.Is(err, injected) {
		t.Fatalf("err = %v", err)
	}
	emptyDir(t, tmp)
	emptyDir(t, dst)
}

// FetchImage into a directory another user can change lays the delta in
// a scratch directory under os.TempDir(), and copies the image in.
func TestFetchImage_AsRootIntoAnotherUsersDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to write into another user's directory")
	}
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(200)
	f.backupAll()
	f.epoch(10)
	m := f.backupAll()[0]
	if m.Delta == nil {
		t.Fatal("not a delta")
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	path := filepath.Join(otherUsersDir(t), "image.sqlite3")
	if err := FetchImage(context.Background(), s, m, path, FetchOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	emptyDir(t, tmp)
	if err := checkImage(context.Background(), path, m); err != nil {
		t.Fatal(err)
	}
}

// A deep verify rebuilds images in a scratch directory it holds locked, as
// a restore does: a killed verify's (or restore's) is removed by the next
// one, a running one's is left alone, and nothing of its own is left.
func TestDeepVerify_SweepsAKilledChecksScratch(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(100)
	f.backupAll()
	tmp := t.TempDir()
	mk := func(name string) string {
		p := filepath.Join(tmp, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(p, "base-1-0123456789abcdef.sqlite3"), []byte("junk"), 0o600)
		return p
	}
	killed := mk("flowkeep-verify-99999999-0123456789abcdef")
	killedRestore := mk("flowkeep-restore-99999998-0123456789abcdef")
	running := mk("flowkeep-verify-1-fedcba9876543210")
	unlock, err := lockDir(running)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	var during []string
	var once sync.Once // Progress is called from the goroutines that fetch
	rep, err := Verify(context.Background(), s, VerifyOptions{Deep: true, TempDir: tmp, Progress: func(int64, int64) {
		once.Do(func() {
			ents, _ := os.ReadDir(tmp)
			for _, e := range ents {
				during = append(during, e.Name())
			}
		})
	}})
	if err != nil || rep.Status != StatusHealthy {
		t.Fatalf("%v %s %+v", err, rep.Status, rep.Problems)
	}
	if len(during) != 2 || !slices.Contains(during, filepath.Base(running)) || !scratchRE.MatchString(during[0]) || !scratchRE.MatchString(during[1]) {
		t.Fatalf("while the check ran, %s held %v: want the running one's scratch and its own", tmp, during)
	}
	for _, p := range []string{killed, killedRestore} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("a killed one's scratch directory is left: %s (%v)", p, err)
		}
	}
	ents, _ := os.ReadDir(tmp)
	if len(ents) != 1 || ents[0].Name() != filepath.Base(running) {
		t.Fatalf("%s holds %v after the check: want only the running one's", tmp, ents)
	}
}
