//go:build unix

package backup_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
)

// A backup run as root (from cron) leaves the chunk key to the recovery
// directory's owner, the user the agent runs as.
func TestSealerFor_AsRootTheKeyGoesToTheDirectorysOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	if err := os.Chown(dir, 4242, 4243); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.SealerFor(dir, []age.Recipient{recipient(t)}, time.Now()); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, backup.ChunkKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Sys().(*syscall.Stat_t); s.Uid != 4242 || s.Gid != 4243 || st.Mode().Perm() != 0o600 {
		t.Fatalf("chunk key owned by %d:%d, mode %v", s.Uid, s.Gid, st.Mode().Perm())
	}
}

// As root in a directory another user owns, the chunk key gets its owner
// before it has a name there: that user, swapping every name it sees for a
// symlink to a file of root's while backups create keys, never gets root to
// chown or chmod that file.
func TestSealerFor_AsRootSwappedNamesNeverGetAFileGivenAway(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chown(dir, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	swapped := make(chan int)
	go func() {
		// What the directory's owner can do: replace any name in it.
		n := 0
		defer func() { swapped <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Type().IsRegular() {
					p := filepath.Join(dir, e.Name())
					if os.Remove(p) == nil && os.Symlink(victim, p) == nil {
						n++
					}
				}
			}
		}
	}()
	r := recipient(t)
	for i := 0; i < 100; i++ {
		os.Remove(filepath.Join(dir, backup.ChunkKeyFile))
		backup.SealerFor(dir, []age.Recipient{r}, time.Now()) // fails when its key was swapped: that is fine
	}
	close(stop)
	t.Logf("%d names swapped", <-swapped)
	st, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(victim)
	if s := st.Sys().(*syscall.Stat_t); string(b) != "secret" || s.Uid != 0 || s.Gid != 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("root's file was changed through a swapped name: %q, %v, owned by %d:%d", b, st.Mode().Perm(), s.Uid, s.Gid)
	}
}
