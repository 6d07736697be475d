package restore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/flowkeep/flowkeep/backup/memstore"
)

// A restore killed between the renames that publish its partitions left
// some in the target and not others (with --force, the old ones moved
// aside too): a directory no flow runs from, which `restore --if-empty`
// took for restored. The next restore rolls those renames back, by the log
// the killed one wrote before its first, and restores the whole set; the
// target says so meanwhile (InterruptedPublish: --if-empty restores), and
// SQLite's empty files beside the partial set go with it. The kill is the
// target as it was right after each rename, copied.
func TestRestore_KilledMidPublishIsRolledBackByTheNext(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 3, s)
	f.epoch(20)
	f.backupAll()
	ref := filepath.Join(t.TempDir(), "ref")
	if _, err := Restore(ctx, s, ref, Options{}); err != nil {
		t.Fatal(err)
	}
	refEpoch, refKeys := loadDir(t, ref)
	for _, force := range []bool{false, true} {
		partial := 0
		for kill := 1; ; kill++ {
			dst := filepath.Join(t.TempDir(), "dst")
			if force {
				if _, err := Restore(ctx, s, dst, Options{}); err != nil {
					t.Fatal(err)
				}
			}
			crash := filepath.Join(t.TempDir(), "crash")
			renames := 0
			real := renameat
			renameat = func(fromDir *os.File, from string, toDir *os.File, to string) error {
				if err := real(fromDir, from, toDir, to); err != nil {
					return err
				}
				if renames++; renames == kill {
					if err := os.CopyFS(crash, os.DirFS(dst)); err != nil {
						t.Fatal(err)
					}
					return errors.New("killed")
				}
				return nil
			}
			Restore(ctx, s, dst, Options{Force: force})
			renameat = real
			if renames < kill {
				break // every rename made before the kill
			}
			parts, _ := filepath.Glob(filepath.Join(crash, "part-*.sqlite3"))
			if len(parts) < 3 {
				partial++
			}
			// Whatever opened the partial set since (flowrun refusing
			// it, an older --if-empty) left SQLite's files beside it.
			for _, p := range parts {
				os.WriteFile(p+"-wal", nil, 0o644)
				os.WriteFile(p+"-shm", make([]byte, 32768), 0o644)
			}
			if !InterruptedPublish(crash) {
				t.Fatalf("force %v, killed after rename %d: the target does not say a publish was interrupted (--if-empty would skip it)", force, kill)
			}
			if _, err := Restore(ctx, s, crash, Options{Force: force}); err != nil {
				t.Fatalf("force %v, killed after rename %d (%d partitions in place): the next restore: %v", force, kill, len(parts), err)
			}
			parts, _ = filepath.Glob(filepath.Join(crash, "part-*.sqlite3"))
			work, _ := filepath.Glob(filepath.Join(crash, workDirPrefix+"*"))
			aside, _ := filepath.Glob(filepath.Join(crash, "part-*.sqlite3.replaced-*"))
			if len(parts) != 3 || len(work) != 0 || (force && len(aside) != 3) || (!force && len(aside) != 0) {
				t.Fatalf("force %v, killed after rename %d: then %d partitions, %d work directories, %d moved aside", force, kill, len(parts), len(work), len(aside))
			}
			if InterruptedPublish(crash) {
				t.Fatalf("force %v, killed after rename %d: still says a publish was interrupted", force, kill)
			}
			if e, got := loadDir(t, crash); e != refEpoch || len(got) != len(refKeys) {
				t.Fatalf("force %v, killed after rename %d: restored epoch %d with %d keys, want %d with %d", force, kill, e, len(got), refEpoch, len(refKeys))
			}
		}
		if partial == 0 {
			t.Fatalf("force %v: no kill left a partial set: the test does not test", force)
		}
	}
}
