//go:build unix

package restore

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// A restore run as root for the service user gives it the chunk key too
// (mode 0600): the agent, running as that user, must read it.
func TestEncrypted_RestoreGivesTheChunkKeyToTheOwner(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give files away")
	}
	s := memstore.New()
	f := newFlow(t, 1, s)
	id := newIdentity(t)
	f.epoch(10)
	f.backupSealed(id.Recipient())
	dst := t.TempDir()
	o := Options{Keys: backup.NewOpener([]age.Identity{id})}.WithOwner(4242, 4243)
	if _, err := Restore(context.Background(), s, dst, o); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dst, backup.ChunkKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Uid != 4242 || sys.Gid != 4243 || st.Mode().Perm() != 0o600 {
		t.Fatalf("chunk key owned by %d:%d, mode %v", sys.Uid, sys.Gid, st.Mode().Perm())
	}
}
