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
//
// SQLite is the exception: it opens files by name, and resolves every
// symlink on the way (a /proc/self/fd name included). The owner of the
// target can rename the private directory (it cannot change what is in it)
// and put a symlink at its name, and SQLite would follow it wherever it
// leads. So when another user can change what the private directory's
// path leads to (safePath), the restore does its SQLite work in a scratch
// directory of its own under Options.TempDir instead, whose path no one
// else can change, and copies each finished file into the private
// directory through descriptors. Otherwise (a restore into one's own
// directory) SQLite works in the private directory itself, and each file
// is written once.

// target is the directory a restore lays partitions into, opened once.
type target struct {
	path string   // resolved
	root *os.Root // names in the directory, never followed out of it
	dir  *os.File // the directory itself: lock, fsync, renames into it
	work *workDir
	// scratch, if set, is where SQLite works (see guard): the work
	// directory's path is not safe from other users.
	scratch *workDir
}

// ErrUnsafeTarget says the path of a restore's target goes through a
// symlink another user can change: where the restore would write is theirs
// to decide.
var ErrUnsafeTarget = errors.New("the restore target's path is not safe from other users")

// openTarget opens dir, which must exist, one name at a time (walkDir): a
// symlink on the way is followed only where no other user could have
// placed it (else ErrUnsafeTarget), and the directory opened is the one
// SQLite will reach by the resolved path, checked once more once open.
func openTarget(dir string) (*target, error) {
	walked, resolved, err := walkDir(dir, false)
	if err != nil {
		return nil, err
	}
	defer walked.Close()
	root, err := os.OpenRoot(resolved)
	if err != nil {
		return nil, err
	}
	d, err := root.Open(".")
	if err != nil {
		root.Close()
		return nil, err
	}
	if a, err1 := walked.Stat(); err1 == nil {
		if b, err2 := d.Stat(); err2 != nil || !os.SameFile(a, b) {
			d.Close()
			root.Close()
			return nil, fmt.Errorf("%w: %s changed while the restore opened it", ErrUnsafeTarget, resolved)
		}
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

// close removes the work directory and the scratch directory, and closes
// the target (which releases its restore lock).
func (t *target) close() {
	if t.work != nil {
		t.work.remove()
		t.work = nil
	}
	if t.scratch != nil {
		t.scratch.remove()
		t.scratch = nil
	}
	t.dir.Close()
	t.root.Close()
}

// guard makes sure SQLite will work where no other user can change what
// its names lead to: the work directory, if its path is safe; otherwise a
// new scratch directory under tempDir (os.TempDir() if empty), whose path
// must be safe, or the restore is refused. It returns why the work
// directory was not safe (nil if it was).
func (t *target) guard(tempDir string) (unsafe error, err error) {
	if unsafe = t.work.intact(); unsafe == nil {
		unsafe = safePath(t.work.path)
	}
	if unsafe == nil {
		return nil, nil
	}
	if t.scratch, err = makeScratch(tempDir, "restore"); err != nil {
		return unsafe, fmt.Errorf("other users can change what the names in %s lead to (%v), so the restore works on the images in a scratch directory of its own; but %w", t.path, unsafe, err)
	}
	return unsafe, nil
}

// sqlite is the directory SQLite works in.
func (t *target) sqlite() *workDir {
	if t.scratch != nil {
		return t.scratch
	}
	return t.work
}

// room is a directory where a restore's images take disk space: n times
// each image's size.
type room struct {
	dir string
	n   int64
}

// rooms says where the images take space: in the target; with a scratch
// directory, also there (twice on one file system: the scratch copy and
// the restored file).
func (t *target) rooms() []room {
	if t.scratch == nil {
		return []room{{t.path, 1}}
	}
	if sameDevice(t.dir, t.scratch.dir) {
		return []room{{t.scratch.parentPath, 2}}
	}
	return []room{{t.scratch.parentPath, 1}, {t.path, 1}}
}

// copyIn copies the file name in the scratch directory into a new file in
// the work directory (through descriptors: O_EXCL there, and
// copy_file_range where the kernel can), removes it from the scratch
// directory, and returns the new file, open. mark, if set, runs first,
// with a name that leads to the new file (fdPath), while SQLite still has
// the scratch file: the partition records which file it is.
func (t *target) copyIn(name, as string, mark func(newFile string) error) (f *os.File, err error) {
	if f, err = t.work.create(as); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
			t.work.root.Remove(as)
			f = nil
		}
	}()
	if mark != nil {
		if err = mark(fdPath(f)); err != nil {
			return f, err
		}
	}
	// A write-ahead log left beside the file would hold part of it.
	if st, err := t.scratch.root.Lstat(name + "-wal"); err == nil && st.Size() > 0 {
		return f, fmt.Errorf("copy %s: SQLite left %d bytes of it in its write-ahead log", name, st.Size())
	}
	src, err := t.scratch.root.Open(name)
	if err != nil {
		return f, err
	}
	_, err = io.Copy(f, src)
	src.Close()
	if err != nil {
		return f, fmt.Errorf("copy %s into %s: %w", t.scratch.pathOf(name), t.work.path, err)
	}
	t.scratch.removeDB(name)
	return f, nil
}

// workDirPrefix names the private directories restores work in; a killed
// restore's is swept by the next one.
const workDirPrefix = ".flowkeep-restore-"

var workDirRE = regexp.MustCompile(`^` + regexp.QuoteMeta(workDirPrefix) + `[0-9a-f]+$`)

// workDir is a restore's private directory: inside its target, or its
// scratch directory (see guard). Made by this process, mode 0700, reached
// through its descriptor (and, by SQLite, its path). What it holds is
// removed with it when the restore ends.
type workDir struct {
	name       string // in parent
	path       string
	parent     *os.Root // the directory it is in
	parentPath string
	ownParent  bool // parent is the work directory's own: close it with it
	root       *os.Root
	dir        *os.File
	seq        atomic.Int64
}

// makeWorkDir makes a new private directory in t.
func makeWorkDir(t *target) (*workDir, error) {
	return makeDirIn(t.root, t.path, func() string {
		var b [8]byte
		rand.Read(b[:])
		return workDirPrefix + hex.EncodeToString(b[:])
	})
}

// makeDirIn makes a new private directory in parent (at parentPath), at
// the first name newName gives that is free.
func makeDirIn(parent *os.Root, parentPath string, newName func() string) (*workDir, error) {
	var name string
	for try := 0; ; try++ {
		name = newName()
		err := parent.Mkdir(name, 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || try == 100 {
			return nil, fmt.Errorf("make the restore's private directory in %s: %w", parentPath, err)
		}
	}
	w := &workDir{name: name, path: filepath.Join(parentPath, name), parent: parent, parentPath: parentPath}
	err := w.open()
	if err != nil {
		if w.dir != nil {
			w.dir.Close()
		}
		if w.root != nil {
			w.root.Close()
		}
		// Only a directory this restore made, and only by its name now.
		if st, lerr := parent.Lstat(name); lerr == nil && st.IsDir() && ownedByUs(st) {
			parent.Remove(name)
		}
		return nil, err
	}
	return w, nil
}

// open opens the directory just made at w.name and makes sure it is that
// one: another user could have put one of theirs at its name.
func (w *workDir) open() error {
	var err error
	if w.root, err = w.parent.OpenRoot(w.name); err != nil {
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
		return fmt.Errorf("%s is not the empty directory this restore just made (the owner of %s can replace what is in it): run the restore again", w.path, w.parentPath)
	}
	// Whatever the umask: no one else may create anything in it.
	return w.dir.Chmod(0o700)
}

// intact reports an error unless the work directory is still at its name
// in its parent: SQLite, which opens files by name, then reached the
// files this restore wrote.
func (w *workDir) intact() error {
	byName, err := w.parent.Lstat(w.name)
	if err == nil {
		var opened os.FileInfo
		if opened, err = w.dir.Stat(); err == nil && !os.SameFile(byName, opened) {
			err = errors.New("another file is at its name")
		}
	}
	if err != nil {
		return fmt.Errorf("the restore's private directory %s was moved while the restore ran (%v): the owner of %s can do that; nothing was restored, run the restore again", w.path, err, w.parentPath)
	}
	return nil
}

// remove removes what the work directory holds (through its descriptor),
// then the directory itself if it still is at its name.
func (w *workDir) remove() {
	if ents, err := fs.ReadDir(w.root.FS(), "."); err == nil {
		for _, e := range ents {
			w.root.RemoveAll(e.Name())
		}
	}
	if w.intact() == nil {
		w.parent.Remove(w.name)
	}
	w.dir.Close()
	w.root.Close()
	if w.ownParent {
		w.parent.Close()
	}
}

// scratchRE names the scratch directories restores do their SQLite work
// in (see guard), and deep verifies rebuild images in: "flowkeep-", the
// job ("restore", "verify"), "-", its pid, "-", a random part. Each holds
// a lock on its scratch directory while it runs; the next restore or deep
// verify removes those no one holds (a killed one's).
var scratchRE = regexp.MustCompile(`^flowkeep-(restore|verify)-[0-9]+-[0-9a-f]+$`)

// ErrUnsafeTempDir says the scratch directory a restore or a deep verify
// needed is in a place other users can change.
var ErrUnsafeTempDir = errors.New("the scratch directory is not safe from other users")

// makeScratch makes a new scratch directory for job ("restore", "verify")
// in tempDir (os.TempDir() if empty), locked while it runs, and refuses
// one whose path another user could change. It then removes the scratch
// directories killed restores and verifies left there.
func makeScratch(tempDir, job string) (*workDir, error) {
	if tempDir == "" {
		tempDir = os.TempDir()
	}
	resolved, err := filepath.Abs(tempDir)
	if err == nil {
		resolved, err = filepath.EvalSymlinks(resolved)
	}
	var parent *os.Root
	if err == nil {
		parent, err = os.OpenRoot(resolved)
	}
	if err != nil {
		return nil, fmt.Errorf("its scratch directory: %w (choose another with --temp-dir)", err)
	}
	w, err := makeDirIn(parent, resolved, func() string {
		var b [8]byte
		rand.Read(b[:])
		return fmt.Sprintf("flowkeep-%s-%d-%s", job, os.Getpid(), hex.EncodeToString(b[:]))
	})
	if err != nil {
		parent.Close()
		return nil, fmt.Errorf("%w (choose another directory with --temp-dir)", err)
	}
	w.ownParent = true
	err = lockOpenDir(w.dir, w.path)
	if err == nil {
		if err = w.intact(); err == nil {
			err = safePath(w.path)
		}
		if err != nil {
			err = fmt.Errorf("%w: %s (%v): choose a directory only you and root can write in with --temp-dir", ErrUnsafeTempDir, w.path, err)
		}
	}
	if err != nil {
		w.remove()
		return nil, err
	}
	sweepScratch(parent, w.name)
	return w, nil
}

// sweepScratch removes the scratch directories in parent that killed
// restores left: this user's, that no running restore holds locked. It
// never follows a symlink.
func sweepScratch(parent *os.Root, keep string) {
	ents, err := fs.ReadDir(parent.FS(), ".")
	if err != nil {
		return
	}
	for _, e := range ents {
		n := e.Name()
		if n == keep || !scratchRE.MatchString(n) || !e.IsDir() {
			continue
		}
		st, err := parent.Lstat(n)
		if err != nil || !st.IsDir() || !ownedByUs(st) {
			continue
		}
		d, err := parent.Open(n)
		if err != nil {
			continue
		}
		if opened, err := d.Stat(); err == nil && os.SameFile(st, opened) && lockOpenDir(d, n) == nil {
			parent.RemoveAll(n)
		}
		d.Close()
	}
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
	err = sealFile(f, mode, o)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// sealFile is seal, of the open file f.
func sealFile(f *os.File, mode os.FileMode, o Options) error {
	err := f.Chmod(mode)
	if err == nil {
		err = giveAway(f, o)
	}
	if err == nil {
		err = f.Sync()
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
// says so; if the process is killed part-way, the next restore undoes them
// (see publishLog). Then the target is fsynced.
func (t *target) publish(files []staged, aside []string, suffix string) error {
	// The renames, planned and logged (see publishLog) before the first.
	type step struct {
		m    move
		kind int    // stepAside, stepOutOfTheWay or stepPlace
		what string // for an error: what failed
	}
	const (
		stepAside = iota
		stepOutOfTheWay
		stepPlace
	)
	var plan []step
	movedOff := map[string]bool{}
	for _, n := range aside {
		plan = append(plan, step{move{t.dir, n, t.dir, n + suffix}, stepAside, fmt.Sprintf("move %s aside", filepath.Join(t.path, n))})
		movedOff[n] = true
	}
	for _, f := range files {
		if st, err := t.root.Lstat(f.final); err == nil && !st.IsDir() && !movedOff[f.final] {
			plan = append(plan, step{move{t.dir, f.final, t.work.dir, t.work.newName("replaced-%s", f.final)}, stepOutOfTheWay, fmt.Sprintf("place %s: move the %s there out of the way", f.what, f.final)})
		}
		plan = append(plan, step{move{t.work.dir, f.name, t.dir, f.final}, stepPlace, "place " + f.what})
	}
	logged := make([]loggedMove, len(plan))
	for i, s := range plan {
		logged[i] = loggedMove{FromWork: s.m.fromDir == t.work.dir, From: s.m.from, ToWork: s.m.toDir == t.work.dir, To: s.m.to}
	}
	if err := t.work.writePublishLog(logged); err != nil {
		return fmt.Errorf("%w; nothing was restored", err)
	}

	var j journal
	placed, movedAside := 0, 0
	fail := func(err error) error {
		if uerr := j.undo(); uerr != nil {
			return fmt.Errorf("%w; putting back the %s already placed and the %s moved aside failed too: %v; in %s, remove the restored part-*.sqlite3 and rename the *%s files to their names before the restore, by hand",
				err, count(placed), count(movedAside), uerr, t.path, suffix)
		}
		t.work.removePublishLog()
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
	for _, s := range plan {
		if err := j.do(s.m); err != nil {
			return fail(fmt.Errorf("%s: %w", s.what, err))
		}
		switch s.kind {
		case stepAside:
			movedAside++
		case stepPlace:
			placed++
		}
	}
	if err := fsync.DirFile(t.dir); err != nil {
		return err
	}
	return t.work.removePublishLog()
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
