package restore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/flowkeep/flowkeep/internal/fsync"
)

// A restore publishes its partitions with one rename each. A process
// killed between them would leave some partitions in the target and not
// others (and, with --force, the old ones moved aside): a directory no
// flow can run from, which a boot-time `restore --if-empty` took for
// restored. So publish first writes the renames it is about to make to
// publishLog in its work directory, durably, and removes the log once the
// target is synced. The next restore into the target finds a killed
// restore's work directory with its log and rolls the renames back
// (rollBackPublish) before it sweeps the directory: the target is as it
// was before the killed restore, and this one starts over.
const publishLog = "publish.json"

// loggedMove is one rename of a publish, between the target and the work
// directory, by name.
type loggedMove struct {
	FromWork bool   `json:"from_work"` // from the work directory (else from the target)
	From     string `json:"from"`
	ToWork   bool   `json:"to_work"`
	To       string `json:"to"`
}

// writePublishLog makes moves the work directory's publish log, durably.
func (w *workDir) writePublishLog(moves []loggedMove) error {
	b, err := json.Marshal(moves)
	if err != nil {
		return err
	}
	f, err := w.create(publishLog)
	if err != nil {
		return fmt.Errorf("write the restore's publish log: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsync.DirFile(w.dir)
	}
	if err != nil {
		w.root.Remove(publishLog)
		return fmt.Errorf("write the restore's publish log: %w", err)
	}
	return nil
}

// removePublishLog removes the log once the publish is durable.
func (w *workDir) removePublishLog() error {
	if err := w.root.Remove(publishLog); err != nil {
		return fmt.Errorf("remove the restore's publish log: %w", err)
	}
	return fsync.DirFile(w.dir)
}

// rollBackPublish undoes, last first, the renames a killed restore's
// publish made by the log in its work directory name (in the target),
// if it has one: a rename is undone where its source is gone and its
// destination is there. Names in the log are plain names, only ever
// renamed within the target and that directory, through their
// descriptors. A work directory that is not a directory this user made is
// not read.
func rollBackPublish(t *target, name string) error {
	// One open of the name, and every check and rename through it (the
	// target's owner can swap the name meanwhile): the directory opened
	// must be the one the name held, not a symlink, and this user's.
	named, err := t.root.Lstat(name)
	if err != nil || !named.IsDir() {
		return nil
	}
	wr, err := t.root.OpenRoot(name)
	if err != nil {
		return nil
	}
	defer wr.Close()
	wd, err := wr.Open(".")
	if err != nil {
		return nil
	}
	defer wd.Close()
	if st, err := wd.Stat(); err != nil || !os.SameFile(named, st) || !ownedByUs(st) {
		return nil
	}
	b, err := wr.ReadFile(publishLog)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read a killed restore's publish log in %s: %w", name, err)
	}
	var moves []loggedMove
	if err := json.Unmarshal(b, &moves); err != nil {
		// Cut short by the kill: it was written before the first rename,
		// so none was made.
		return nil
	}
	side := func(work bool) (*os.File, *os.Root) {
		if work {
			return wd, wr
		}
		return t.dir, t.root
	}
	for i := len(moves) - 1; i >= 0; i-- {
		m := moves[i]
		if !plainName(m.From) || !plainName(m.To) {
			return fmt.Errorf("a killed restore's publish log in %s names %q and %q: not plain names, not rolled back", name, m.From, m.To)
		}
		fromDir, fromRoot := side(m.FromWork)
		toDir, toRoot := side(m.ToWork)
		if _, err := fromRoot.Lstat(m.From); !errors.Is(err, fs.ErrNotExist) {
			continue // not made (or already undone)
		}
		if _, err := toRoot.Lstat(m.To); err != nil {
			continue
		}
		if err := renameat(toDir, m.To, fromDir, m.From); err != nil {
			return fmt.Errorf("roll back a killed restore: %w", err)
		}
		if m.FromWork && !m.ToWork {
			// A partition taken back out of the target: SQLite's files
			// beside it there, made by whatever opened it since (flowrun
			// refusing the partial set), go too, unless its WAL holds
			// frames.
			for _, suf := range []string{"-wal", "-shm"} {
				if st, err := t.root.Lstat(m.To + suf); err == nil && st.Mode().IsRegular() && (suf == "-shm" || st.Size() == 0) {
					t.root.Remove(m.To + suf)
				}
			}
		}
	}
	if err := fsync.DirFile(t.dir); err != nil {
		return err
	}
	return fsync.DirFile(wd)
}

// plainName says whether n names an entry of a directory itself.
func plainName(n string) bool {
	return n != "" && n != "." && n != ".." && !strings.ContainsAny(n, "/"+string(os.PathSeparator))
}

// InterruptedPublish reports whether dir holds what a restore killed while
// it published its partitions left: a work directory with its publish log.
// The partitions in dir are then a part of a set (the next restore rolls
// them back), not a restored flow.
func InterruptedPublish(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if workDirRE.MatchString(e.Name()) && e.IsDir() {
			if _, err := os.Lstat(filepath.Join(dir, e.Name(), publishLog)); err == nil {
				return true
			}
		}
	}
	return false
}
