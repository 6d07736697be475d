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
