//go:build unix

package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/flowkeep/flowkeep/backup/memstore"
)

// The target directory of these tests belongs to the service user the
// restore is for; the restore runs as root. Whatever that user puts at a
// name in its directory, the restore changes nothing outside it.

const serviceUID, serviceGID = 12345, 12346

// victim is a file of root's outside the target directory.
type victim struct {
	path string
	data []byte
	mode os.FileMode
	uid  uint32
	gid  uint32
}

func newVictim(t *testing.T) *victim {
	t.Helper()
	v := &victim{path: filepath.Join(t.TempDir(), "victim"), data: []byte("root's, not yours"), mode: 0o600}
	if err := os.WriteFile(v.path, v.data, v.mode); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(v.path)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Sys().(*syscall.Stat_t)
	v.uid, v.gid = s.Uid, s.Gid
	return v
}

func (v *victim) unchanged(t *testing.T) {
	t.Helper()
	st, err := os.Lstat(v.path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(v.path)
	s := st.Sys().(*syscall.Stat_t)
	if !st.Mode().IsRegular() || !bytes.Equal(b, v.data) || st.Mode().Perm() != v.mode || s.Uid != v.uid || s.Gid != v.gid {
		t.Fatalf("the file outside the target changed: %d bytes (%q...), mode %v, owned by %d:%d (was %v, %d:%d)",
			len(b), b[:min(len(b), 16)], st.Mode(), s.Uid, s.Gid, v.mode, v.uid, v.gid)
	}
}

// serviceDir is a target directory owned by the service user (when the
// test runs as root).
func serviceDir(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	if os.Geteuid() == 0 {
		if err := os.Chown(dst, serviceUID, serviceGID); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func ownedAsAsked(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	s := st.Sys().(*syscall.Stat_t)
	if !st.Mode().IsRegular() || st.Mode().Perm() != mode || s.Uid != serviceUID || s.Gid != serviceGID {
		t.Fatalf("%s: %v owned by %d:%d, want a file of mode %v owned by %d:%d", path, st.Mode(), s.Uid, s.Gid, mode, serviceUID, serviceGID)
	}
}

// legacyTemps are the names restores wrote in the target directory itself
// (before they wrote in a private directory) for backup id of partition p.
func legacyTemps(p int, id string) []string {
	tmp := fmt.Sprintf(".part-%d.%s.restoring", p, id)
	return []string{tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal",
		tmp + ".restore-tmp", tmp + ".restore-tmp-wal", tmp + ".restore-tmp-journal", tmp + ".restore-tmp.delta"}
}

// Security review, finding 5: a symlink planted in the target directory at
// a temporary file's name (the delta's, the image's, SQLite's) made the
// restore write through it. It is removed, never followed.
func TestRestore_ASymlinkAtATemporaryNameIsRemovedNotFollowed(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(200)
	f.epoch(200)
	f.backupAll()
	f.epoch(10)
	f.epoch(10)
	ms := f.backupAll()
	v := newVictim(t)
	dst := serviceDir(t)
	var planted []string
	for _, m := range ms {
		if m.Delta == nil {
			t.Fatalf("backup %s is not a delta", m.ID)
		}
		for _, n := range legacyTemps(m.Partition.Index, m.ID) {
			if err := os.Symlink(v.path, filepath.Join(dst, n)); err != nil {
				t.Fatal(err)
			}
			planted = append(planted, n)
		}
	}
	o := Options{}
	if os.Geteuid() == 0 {
		o = o.WithOwner(serviceUID, serviceGID)
	}
	if _, err := Restore(context.Background(), s, dst, o); err != nil {
		t.Fatal(err)
	}
	v.unchanged(t)
	for _, n := range planted {
		if _, err := os.Lstat(filepath.Join(dst, n)); !os.IsNotExist(err) {
			t.Errorf("%s left in place: %v", n, err)
		}
	}
	if e, got := loadDir(t, dst); e != 5 || got["k150"] != "v2" || got["k3"] != "v4" {
		t.Fatalf("restored epoch %d, k150=%q k3=%q", e, got["k150"], got["k3"])
	}
}

// A killed restore's leftovers are swept by the next restore: stale
// symlinks at its temporary names (removed, never followed) and its
// private directories.
func TestRestore_SweepRemovesStaleSymlinksAndPrivateDirectories(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(10)
	m := f.backupAll()[0]
	v := newVictim(t)
	vdir := t.TempDir()
	if err := os.WriteFile(filepath.Join(vdir, "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := serviceDir(t)
	var planted []string
	for i, n := range legacyTemps(0, m.ID) {
		to := v.path
		if i%2 == 1 {
			to = vdir
		}
		if err := os.Symlink(to, filepath.Join(dst, n)); err != nil {
			t.Fatal(err)
		}
		planted = append(planted, n)
	}
	left := filepath.Join(dst, workDirPrefix+"0123456789abcdef")
	if err := os.Mkdir(left, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(left, "part-0.1.sqlite3"), []byte("junk"), 0o600)
	if err := os.Symlink(vdir, filepath.Join(dst, workDirPrefix+"fedcba9876543210")); err != nil {
		t.Fatal(err)
	}
	planted = append(planted, filepath.Base(left), workDirPrefix+"fedcba9876543210")
	os.WriteFile(filepath.Join(dst, "notes.txt"), []byte("mine"), 0o644)
	if _, err := Restore(context.Background(), s, dst, Options{}); err != nil {
		t.Fatal(err)
	}
	v.unchanged(t)
	if b, err := os.ReadFile(filepath.Join(vdir, "keep")); err != nil || string(b) != "keep" {
		t.Fatalf("a directory a symlink pointed to lost its file: %q, %v", b, err)
	}
	for _, n := range planted {
		if _, err := os.Lstat(filepath.Join(dst, n)); !os.IsNotExist(err) {
			t.Errorf("%s left in place: %v", n, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "notes.txt")); err != nil {
		t.Fatal("restore removed a file that was not its own")
	}
}

// swapNames does what the owner of dir can do to a restore working in it:
// it renames every entry restore has not published (the partitions and
// the chunk key) away and puts a symlink to victim at its name.
func swapNames(dir, victim string, seq *atomic.Int64) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, ".") || strings.HasPrefix(n, ".moved-") || e.Type()&os.ModeSymlink != 0 {
			continue
		}
		p := filepath.Join(dir, n)
		if os.Rename(p, filepath.Join(dir, fmt.Sprintf(".moved-%d", seq.Add(1)))) == nil {
			os.Symlink(victim, p)
		}
	}
}

// Security review, finding 4: a restore run as root set mode and owner by
// name, after the file sat in the service user's directory; a symlink
// swapped in at that moment made root chmod and chown its target. At the
// worst moment (everything fetched and trimmed, nothing published), every
// name restore uses in the directory is swapped for a symlink: nothing
// outside changes, and the partitions get the mode and owner asked for.
func TestRestore_AsRootModeAndOwnerAreSetThroughTheDescriptor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files away")
	}
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(10)
	f.backupAll()
	v := newVictim(t)
	dst := serviceDir(t)
	var seq atomic.Int64
	testHookStaged = func() { swapNames(dst, v.path, &seq) }
	defer func() { testHookStaged = nil }()
	o := Options{Mode: 0o640}.WithOwner(serviceUID, serviceGID)
	if _, err := Restore(context.Background(), s, dst, o); err != nil {
		t.Fatal(err)
	}
	if seq.Load() == 0 {
		t.Fatal("no name was swapped")
	}
	v.unchanged(t)
	for p := range 2 {
		ownedAsAsked(t, filepath.Join(dst, fmt.Sprintf("part-%d.sqlite3", p)), 0o640)
	}
}

// The same, for the whole restore: while it runs, the directory's owner
// keeps swapping every name it sees for a symlink to a file of root's. The
// restore may fail (its private directory is gone from under it), but it
// changes nothing outside the directory.
func TestRestore_AsRootNamesSwappedThroughoutChangeNothingOutside(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files away")
	}
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(200)
	f.backupAll()
	f.epoch(10)
	f.backupAll()
	v := newVictim(t)
	dst := serviceDir(t)
	stop, stopped := make(chan struct{}), make(chan struct{})
	var seq atomic.Int64
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
				swapNames(dst, v.path, &seq)
			}
		}
	}()
	o := Options{Mode: 0o640}.WithOwner(serviceUID, serviceGID)
	_, err := Restore(context.Background(), s, dst, o)
	close(stop)
	<-stopped
	t.Logf("%d names swapped; the restore: %v", seq.Load(), err)
	v.unchanged(t)
	if err == nil {
		for p := range 2 {
			ownedAsAsked(t, filepath.Join(dst, fmt.Sprintf("part-%d.sqlite3", p)), 0o640)
		}
	}
}

// Publishing is all or nothing: when the k-th partition cannot take its
// name, the ones already placed are taken back and, with --force, the
// files moved aside are put back; the error says so.
func TestRestore_PublishIsAllOrNothing(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 3, s)
	f.epoch(10)
	f.backupAll()
	final := regexp.MustCompile(`^part-\d+\.sqlite3$`)
	for _, force := range []bool{false, true} {
		t.Run(fmt.Sprint("force=", force), func(t *testing.T) {
			dst := t.TempDir()
			old := map[string]os.FileInfo{}
			if force {
				if _, err := Restore(context.Background(), s, dst, Options{}); err != nil {
					t.Fatal(err)
				}
				ents, _ := os.ReadDir(dst)
				for _, e := range ents {
					st, _ := os.Lstat(filepath.Join(dst, e.Name()))
					old[e.Name()] = st
				}
			}
			injected := errors.New("injected failure")
			placed := 0
			real := renameat
			renameat = func(fromDir *os.File, from string, toDir *os.File, to string) error {
				if final.MatchString(filepath.Base(to)) {
					if placed++; placed == 3 {
						return injected
					}
				}
				return real(fromDir, from, toDir, to)
			}
			defer func() { renameat = real }()
			_, err := Restore(context.Background(), s, dst, Options{Force: force})
			t.Log(err)
			if !errors.Is(err, injected) || !strings.Contains(err.Error(), "nothing was restored") {
				t.Fatalf("err = %v", err)
			}
			ents, _ := os.ReadDir(dst)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
				st, _ := os.Lstat(filepath.Join(dst, e.Name()))
				if was, ok := old[e.Name()]; !ok || !os.SameFile(was, st) {
					t.Errorf("%s: not the file that was there before the restore", e.Name())
				}
			}
			if len(names) != len(old) {
				t.Fatalf("the directory holds %v, before the restore %d files", names, len(old))
			}
		})
	}
}

// seal and publish work through descriptors only: with the work
// directory's name swapped for a symlink to root's directory, and a
// symlink to root's file at the final name, they change nothing outside,
// and the file takes its final name with the mode and owner asked for.
func TestPublish_WorksThroughDescriptorsOnly(t *testing.T) {
	v := newVictim(t)
	dst := serviceDir(t)
	tg, err := openTarget(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	if tg.work, err = makeWorkDir(tg); err != nil {
		t.Fatal(err)
	}
	w := tg.work
	// Named as the victim is: a step by name would reach it.
	f, err := w.create(filepath.Base(v.path))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("restored")
	f.Close()
	if err := os.Rename(w.path, w.path+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(v.path), w.path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(v.path, filepath.Join(dst, "part-0.sqlite3")); err != nil {
		t.Fatal(err)
	}
	if w.intact() == nil {
		t.Fatal("a work directory moved away counts as intact")
	}
	o := Options{}
	if os.Geteuid() == 0 {
		o = o.WithOwner(serviceUID, serviceGID)
	}
	if err := w.seal(filepath.Base(v.path), 0o640, o); err != nil {
		t.Fatal(err)
	}
	if err := tg.publish([]staged{{name: filepath.Base(v.path), final: "part-0.sqlite3", what: "partition 0"}}, nil, ""); err != nil {
		t.Fatal(err)
	}
	v.unchanged(t)
	final := filepath.Join(dst, "part-0.sqlite3")
	if b, err := os.ReadFile(final); err != nil || string(b) != "restored" {
		t.Fatalf("%s: %q, %v", final, b, err)
	}
	if os.Geteuid() == 0 {
		ownedAsAsked(t, final, 0o640)
	} else if st, _ := os.Lstat(final); st.Mode().Perm() != 0o640 {
		t.Fatalf("%s: mode %v", final, st.Mode())
	}
}

// A publish that fails while it moves the old partitions aside puts back
// those it moved, and places nothing.
func TestPublish_AFailureMovingAsidePutsBackWhatMoved(t *testing.T) {
	dst := t.TempDir()
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		os.WriteFile(filepath.Join(dst, n), []byte("old "+n), 0o644)
	}
	tg, err := openTarget(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	if tg.work, err = makeWorkDir(tg); err != nil {
		t.Fatal(err)
	}
	f, _ := tg.work.create("new")
	f.Close()
	injected := errors.New("injected failure")
	real := renameat
	renameat = func(fromDir *os.File, from string, toDir *os.File, to string) error {
		if to == "part-1.sqlite3.replaced-X" {
			return injected
		}
		return real(fromDir, from, toDir, to)
	}
	defer func() { renameat = real }()
	err = tg.publish([]staged{{name: "new", final: "part-0.sqlite3", what: "partition 0"}}, []string{"part-0.sqlite3", "part-1.sqlite3"}, ".replaced-X")
	if !errors.Is(err, injected) || !strings.Contains(err.Error(), "put back the 1 file moved aside") {
		t.Fatalf("err = %v", err)
	}
	ents, _ := os.ReadDir(dst)
	if len(ents) != 3 { // the two partitions and the work directory
		t.Fatalf("%d entries in the directory, want 3", len(ents))
	}
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		if b, _ := os.ReadFile(filepath.Join(dst, n)); string(b) != "old "+n {
			t.Fatalf("%s holds %q", n, b)
		}
	}
}

// Outside test, round 2: the service user owns the directory the target is
// named in, and replaces the target (or a directory on its way) with a
// symlink to a directory of root's. A root restore must not follow it:
// where it writes is the service user's to decide. It refuses with
// ErrUnsafeTarget and writes nothing there. A symlink in a directory only
// root can write (an operator's own) is followed as before.
func TestRestore_AsRootASymlinkTheServiceUserPlantedInThePathIsNotFollowed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the directory away")
	}
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(10)
	f.backupAll()
	for _, c := range []struct {
		name string
		to   func(home, rootDir string) string
	}{
		{"the target is the symlink", func(home, _ string) string { return filepath.Join(home, "fk") }},
		{"a directory on the way is", func(home, _ string) string { return filepath.Join(home, "fk", "new", "deeper") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			home := serviceDir(t) // the service user's
			rootDir := t.TempDir()
			if err := os.Symlink(rootDir, filepath.Join(home, "fk")); err != nil {
				t.Fatal(err)
			}
			os.Lchown(filepath.Join(home, "fk"), serviceUID, serviceGID)
			_, err := Restore(context.Background(), s, c.to(home, rootDir), Options{}.WithOwner(serviceUID, serviceGID))
			if !errors.Is(err, ErrUnsafeTarget) {
				t.Fatalf("restore through the service user's symlink: %v, want ErrUnsafeTarget", err)
			}
			if ents, _ := os.ReadDir(rootDir); len(ents) != 0 {
				t.Fatalf("the restore wrote into root's directory: %v", ents)
			}
		})
	}
	t.Run("an operator's own symlink is followed", func(t *testing.T) {
		real := t.TempDir()
		link := filepath.Join(t.TempDir(), "link")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		if _, err := Restore(context.Background(), s, link, Options{}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(real, "part-0.sqlite3")); err != nil {
			t.Fatalf("not restored through the operator's symlink: %v", err)
		}
	})
}
