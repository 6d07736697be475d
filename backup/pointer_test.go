package backup_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// A latest pointer is what the next backup builds its delta on. A bucket
// writer's pointer must never be built on, nor stop the backups: in a
// signed location an unsigned one is passed over (a new base is taken),
// and in an encrypted location a plaintext one is too.
func TestBackup_AForgedLatestPointerIsNotBuiltOn(t *testing.T) {
	ctx := context.Background()
	keyPath := filepath.Join(t.TempDir(), "signing.key")
	if _, err := backup.GenerateSigningKey(keyPath); err != nil {
		t.Fatal(err)
	}
	signing, err := backup.LoadSigningKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := age.GenerateX25519Identity()
	for _, c := range []struct {
		name string
		opts backup.Options
		// forge returns the pointer's bytes as the bucket writer makes it
		// from the genuine latest manifest.
		forge func(m *backup.Manifest) []byte
	}{
		{"signed location, unsigned pointer", backup.Options{SigningKey: signing}, func(m *backup.Manifest) []byte {
			b, err := m.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			return b
		}},
		{"encrypted location, plaintext pointer", backup.Options{Recipients: []age.Recipient{id.Recipient()}}, func(m *backup.Manifest) []byte {
			plain := *m
			plain.Encryption = nil
			b, err := plain.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			return b
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, st := flowDir(t, 1, time.Hour)
			commitKeys(t, st, 1, seq(0, 1000), "v")
			s := memstore.New()
			res, err := backup.BackupDir(ctx, s, dir, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			m := res[0].Manifest
			commitKeys(t, st, 2, seq(0, 10), "w")
			// Control: over the genuine pointer, the next backup is a delta.
			if res, err = backup.BackupDir(ctx, s, dir, c.opts); err != nil || res[0].Kind != "delta" {
				t.Fatalf("over the genuine pointer: %+v, %v", res[0], err)
			}
			commitKeys(t, st, 3, seq(0, 10), "x")
			if err := s.Put(ctx, backup.LatestKey(m.Flow.UID, m.Partition.Index), c.forge(res[0].Manifest)); err != nil {
				t.Fatal(err)
			}
			res, err = backup.BackupDir(ctx, s, dir, c.opts)
			if err != nil {
				t.Fatalf("a forged pointer stopped the backup: %v", err)
			}
			if res[0].Kind != "base" {
				t.Fatalf("the backup built a %s on the forged pointer", res[0].Kind)
			}
		})
	}
}
