package restore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync/atomic"

	"github.com/flowkeep/flowkeep/internal/fsync"
)

// A restore often runs as root into a directory a service user owns. That
// user can rename, remove and create anything in it at any moment, so a
// name there is no promise of which file it leads to. The restore therefore
// opens the directory once (resolving a symlink the operator gave) and
// works through that descriptor only; it writes every temporary file in a
// private directory it makes inside (mode 0700, so no one else can put
// anything in it, and on the target's file system, so the final renames
// keep each file's inode, which the partition records); it sets mode and
// owner through each file's descriptor before the file is renamed into the
// target; and it never follows a symlink there.

// target is the directory a restore lays partitions into, opened once.
type target struct {
	path string   // resolved: SQLite opens files by name
	root *os.Root // names in the directory, never followed out of it
	dir  *os.File // the directory itself: lock, fsync, renames into it
	work *workDir
}

// openTarget opens dir, which must exist. A symlink there is resolved now,
// once.
func openTarget(dir string) (*target, error) {
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(resolved)
	if err != nil {
		return nil, err
	}
	d, err := root.Open(".")
	if err != nil {
		root.Close()
		return nil, err
	}
	t := &target{path: resolved, root: root, dir: d}
	// SQLite reaches the images by resolved's name: it must be this
	// directory.
	byName, err := os.Stat(resolved)
	if err == nil {
		var opened os.FileInfo
		if opened, err = d.Stat(); err == nil && !os.SameFile(byName, opened) {
			err = fmt.Errorf("%s changed while the restore opened it", dir)
		}
	}
	if err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// close removes the work directory and closes the target (which releases
// its restore lock).
func (t *target) close() {
	if t.work != nil {
		t.work.remove(t)
		t.work = nil
	}
	t.dir.Close()
	t.root.Close()
}

// workDirPrefix names the private directories restores work in; a killed
// restore's is swept by the next one.
const workDirPrefix = ".flowkeep-restore-"

var workDirRE = regexp.MustCompile(`^` + regexp.QuoteMeta(workDirPrefix) + `[0-9a-f]+$`)

// workDir is a restore's private directory inside its target: made by this
// process, mode 0700, reached through its descriptor (and, by SQLite, its
// path). What it holds is removed with it when the restore ends.
type workDir struct {
	name string // in the target
	path string
	root *os.Root
	dir  *os.File
	seq  atomic.Int64
}

// makeWorkDir makes a new private directory in t.
func makeWorkDir(t *target) (*workDir, error) {
	var name string
	for try := 0; ; try++ {
		var b [8]byte
		rand.Read(b[:])
		name = workDirPrefix + hex.EncodeToString(b[:])
		err := t.root.Mkdir(name, 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || try == 100 {
			return nil, fmt.Errorf("make the restore's private directory in %s: %w", t.path, err)
		}
	}
	w := &workDir{name: name, path: filepath.Join(t.path, name)}
	err := w.open(t)
	if err != nil {
		if w.dir != nil {
			w.dir.Close()
		}
		if w.root != nil {
			w.root.Close()
		}
		// Only a directory this restore made, and only by its name now.
		if st, lerr := t.root.Lstat(name); lerr == nil && st.IsDir() && ownedByUs(st) {
			t.root.Remove(name)
		}
		return nil, err
	}
	return w, nil
}

// open opens the directory just made at w.name and makes sure it is that
// one: another user could have put one of theirs at its name.
func (w *workDir) open(t *target) error {
	var err error
	if w.root, err = t.root.OpenRoot(w.name); err != nil {
		return fmt.Errorf("open the restore's private directory: %w", err)
	}
	if w.dir, err = w.root.Open("."); err != nil {
		return fmt.Errorf("open the restore's private directory: %w", err)
	}
	st, err := w.dir.Stat()
	if err != nil {
		return err
	}
	if _, err := w.dir.Readdirnames(1); !st.IsDir() || !ownedByUs(st) || err != io.EOF {
		return fmt.Errorf("%s is not the empty directory this restore just made (the owner of %s can replace what is in it): run the restore again", w.path, t.path)
	}
	// Whatever the umask: no one else may create anything in it.
	return w.dir.Chmod(0o700)
}

// intact reports an error unless the work directory is still at its name
// in the target: SQLite, which opens files by name, then reached the files
// this restore wrote.
func (w *workDir) intact(t *target) error {
	byName, err := t.root.Lstat(w.name)
	if err == nil {
		var opened os.FileInfo
		if opened, err = w.dir.Stat(); err == nil && !os.SameFile(byName, opened) {
			err = errors.New("another file is at its name")
		}
	}
	if err != nil {
		return fmt.Errorf("the restore's private directory %s was moved while the restore ran (%v): the owner of %s can do that; nothing was restored, run the restore again", w.path, err, t.path)
	}
	return nil
}

// remove removes what the work directory holds (through its descriptor),
// then the directory itself if it still is at its name.
func (w *workDir) remove(t *target) {
	if ents, err := fs.ReadDir(w.root.FS(), "."); err == nil {
		for _, e := range ents {
			w.root.RemoveAll(e.Name())
		}
	}
	if w.intact(t) == nil {
		t.root.Remove(w.name)
	}
	w.dir.Close()
	w.root.Close()
}

// newName returns a fresh name in the work directory.
func (w *workDir) newName(format string, args ...any) string {
	return fmt.Sprintf("%d.", w.seq.Add(1)) + fmt.Sprintf(format, args...)
}

// pathOf is the path of name in the work directory, for SQLite.
func (w *workDir) pathOf(name string) string { return filepath.Join(w.path, name) }

// create creates name in the work directory: a new file (O_EXCL, and
// os.Root never follows a symlink with O_CREATE|O_EXCL).
func (w *workDir) create(name string) (*os.File, error) {
	return w.root.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
}

// removeDB removes name and the files SQLite keeps beside it.
func (w *workDir) removeDB(name string) {
	for _, suf := range []string{"", "-wal", "-shm", "-journal"} {
		w.root.Remove(name + suf)
	}
}

// seal gives the file name in the work directory its mode and the owner
// the restore was asked for, through its descriptor, and makes it durable:
// the one fsync of the file, before it takes its final name.
func (w *workDir) seal(name string, mode os.FileMode, o Options) error {
	f, err := w.root.Open(name)
	if err != nil {
		return err
	}
	err = f.Chmod(mode)
	if err == nil {
		err = giveAway(f, o)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeFile writes data to a new file in the work directory, sealed (see
// seal), and returns its name.
func (w *workDir) writeFile(what string, data []byte, mode os.FileMode, o Options) (string, error) {
	name := w.newName("%s", what)
	f, err := w.create(name)
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = w.seal(name, mode, o)
	}
	if err != nil {
		w.root.Remove(name)
		return "", fmt.Errorf("write %s: %w", what, err)
	}
	return name, nil
}

// giveAway gives f to the owner the restore was asked for, if any.
func giveAway(f *os.File, o Options) error {
	if !o.chown {
		return nil
	}
	if err := f.Chown(o.UID, o.GID); err != nil {
		return fmt.Errorf("give %s to uid %d gid %d: %w (run the restore as root, or as that user)", filepath.Clean(f.Name()), o.UID, o.GID, err)
	}
	return nil
}

// renameat renames from in fromDir to to in toDir, never following a
// symlink at either name (tests replace it to fail a rename).
var renameat = renameDirs

// move is one rename of a publish.
type move struct {
	fromDir *os.File
	from    string
	toDir   *os.File
	to      string
}

// journal is the renames a publish has made, in order, so that a failure
// part-way can undo them.
type journal []move

func (j *journal) do(m move) error {
	if err := renameat(m.fromDir, m.from, m.toDir, m.to); err != nil {
		return err
	}
	*j = append(*j, m)
	return nil
}

// undo renames back what was done, last first, and returns the first
// rename that failed (it tries them all).
func (j *journal) undo() error {
	var first error
	for i := len(*j) - 1; i >= 0; i-- {
		m := (*j)[i]
		if err := renameat(m.toDir, m.to, m.fromDir, m.from); err != nil && first == nil {
			first = fmt.Errorf("move %s back to %s: %w", filepath.Join(m.toDir.Name(), m.to), filepath.Join(m.fromDir.Name(), m.from), err)
		}
	}
	*j = nil
	return first
}

// staged is a sealed file in the work directory and the name it takes in
// the target.
type staged struct {
	name  string // in the work directory
	final string // in the target
	what  string // "partition 3", for errors
}

// publish renames the staged files to their final names in the target, all
// or nothing. First, with aside, the partition files there are moved aside
// (NAME.replaced-SUFFIX, kept); a file at a final name is moved into the
// work directory (and discarded with it) so that it can be put back. If a
// rename fails, every rename done is undone, last first, and the error
// says so. Then the target is fsynced.
func (t *target) publish(files []staged, aside []string, suffix string) error {
	var j journal
	placed, movedAside := 0, 0
	fail := func(err error) error {
		if uerr := j.undo(); uerr != nil {
			return fmt.Errorf("%w; putting back the %s already placed and the %s moved aside failed too: %v; in %s, remove the restored part-*.sqlite3 and rename the *%s files to their names before the restore, by hand",
				err, count(placed), count(movedAside), uerr, t.path, suffix)
		}
		what := "nothing was restored"
		switch {
		case placed > 0 && movedAside > 0:
			what += fmt.Sprintf(" (took back the %s already placed and put back the %s moved aside)", count(placed), count(movedAside))
		case placed > 0:
			what += fmt.Sprintf(" (took back the %s already placed)", count(placed))
		case movedAside > 0:
			what += fmt.Sprintf(" (put back the %s moved aside)", count(movedAside))
		}
		return fmt.Errorf("%w; %s", err, what)
	}
	for _, n := range aside {
		if err := j.do(move{t.dir, n, t.dir, n + suffix}); err != nil {
			return fail(fmt.Errorf("move %s aside: %w", filepath.Join(t.path, n), err))
		}
		movedAside++
	}
	for _, f := range files {
		if st, err := t.root.Lstat(f.final); err == nil && !st.IsDir() {
			if err := j.do(move{t.dir, f.final, t.work.dir, t.work.newName("replaced-%s", f.final)}); err != nil {
				return fail(fmt.Errorf("place %s: move the %s there out of the way: %w", f.what, f.final, err))
			}
		}
		if err := j.do(move{t.work.dir, f.name, t.dir, f.final}); err != nil {
			return fail(fmt.Errorf("place %s: %w", f.what, err))
		}
		placed++
	}
	return fsync.DirFile(t.dir)
}

// count is "1 file" or "N files".
func count(n int) string {
	if n == 1 {
		return "1 file"
	}
	return fmt.Sprintf("%d files", n)
}

// pathEntry is what safePathOf needs to know of a directory.
type pathEntry struct {
	mode os.FileMode
	uid  int // -1: unknown
}

// safePathOf reports an error unless no user but euid and root can change
// what the absolute path dir leads to (OpenSSH's safe_path): dir and every
// directory above it must be a directory, not a symlink, owned by euid or
// root, and writable by no one else, unless it is sticky and the entry in
// it on the way to dir is owned by euid or root (as /tmp protects its
// entries). lstat describes a name, without following a symlink there.
func safePathOf(dir string, euid int, lstat func(string) (pathEntry, error)) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%s is not an absolute path", dir)
	}
	trusted := func(uid int) bool { return uid == euid || uid == 0 }
	p := filepath.Clean(dir)
	leaf, below := true, 0 // below: the owner of the entry in p on the way to dir
	for {
		e, err := lstat(p)
		if err != nil {
			return err
		}
		switch perm := e.mode.Perm(); {
		case e.mode&os.ModeSymlink != 0:
			return fmt.Errorf("%s is a symlink", p)
		case !e.mode.IsDir():
			return fmt.Errorf("%s is not a directory", p)
		case !trusted(e.uid):
			return fmt.Errorf("%s belongs to uid %d", p, e.uid)
		case perm&0o022 != 0 && (e.mode&os.ModeSticky == 0 || leaf || !trusted(below)):
			who := "its group"
			if perm&0o002 != 0 {
				who = "every user"
			}
			return fmt.Errorf("%s can be written by %s", p, who)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return nil
		}
		p, leaf, below = parent, false, e.uid
	}
}
