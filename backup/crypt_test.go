package backup_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

func recipient(t *testing.T) age.Recipient {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id.Recipient()
}

// A location holds encrypted backups or plaintext ones, never both; the
// first encrypted backup records it, and a location without a config is
// judged by its manifests.
func TestCheckScheme_ALocationNeverMixesSchemes(t *testing.T) {
	ctx := context.Background()
	legacy := func(s *memstore.Store) {
		s.Put(ctx, "manifests/00112233/part-0000/20261124T101010.123Z-0a0b0c0d.json", []byte(`{"format":"flowkeep-backup/2"}`))
	}
	config := func(scheme string) func(*memstore.Store) {
		return func(s *memstore.Store) {
			s.Put(ctx, backup.ConfigKey, []byte(`{"format":"flowkeep-repo/1","encryption":"`+scheme+`"}`))
		}
	}
	for _, c := range []struct {
		name      string
		setup     func(*memstore.Store)
		encrypted bool
		want      error
		scheme    string // the config afterwards
	}{
		{"empty, encrypted", func(*memstore.Store) {}, true, nil, "age"},
		{"empty, plaintext", func(*memstore.Store) {}, false, nil, ""},
		{"encrypted, plaintext write", config("age"), false, backup.ErrEncryptionMismatch, "age"},
		{"plaintext, encrypted write", config("none"), true, backup.ErrEncryptionMismatch, "none"},
		{"older plaintext backups, encrypted write", legacy, true, backup.ErrEncryptionMismatch, ""},
		{"older plaintext backups, plaintext write", legacy, false, nil, ""},
		{"older encrypted backups, plaintext write", func(s *memstore.Store) {
			s.Put(ctx, "manifests/00112233/part-0000/20261124T101010.123Z-0a0b0c0d.json", []byte(`{"format":"flowkeep-backup/2+age"}`))
			config("age")(s)
		}, false, backup.ErrEncryptionMismatch, "age"},
		// A damaged config (or garbage a bucket writer left) is as good as
		// none: the manifests decide, and an encrypted writer replaces it.
		{"damaged config, encrypted write", func(s *memstore.Store) { s.Put(ctx, backup.ConfigKey, []byte("{")) }, true, nil, "age"},
		{"damaged config, plaintext write", func(s *memstore.Store) { s.Put(ctx, backup.ConfigKey, []byte("{")) }, false, nil, ""},
		{"damaged config over plaintext backups, encrypted write", func(s *memstore.Store) {
			legacy(s)
			s.Put(ctx, backup.ConfigKey, []byte("garbage"))
		}, true, backup.ErrEncryptionMismatch, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := memstore.New()
			c.setup(s)
			err := backup.CheckScheme(ctx, s, c.encrypted, time.Now())
			if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Fatalf("CheckScheme: %v, want %v", err, c.want)
			}
			got := ""
			if b, err := backup.ReadAll(ctx, s, backup.ConfigKey, 1<<16); err == nil {
				var rc backup.RepoConfig
				json.Unmarshal(b, &rc)
				got = rc.Encryption
			}
			if got != c.scheme {
				t.Fatalf("config says %q, want %q", got, c.scheme)
			}
		})
	}
}

// A plaintext backup to an encrypted location uploads nothing.
func TestBackup_PlaintextIntoAnEncryptedLocationIsRefused(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 100), "v")
	if _, err := backup.BackupDir(ctx, s, dir, backup.Options{Recipients: []age.Recipient{recipient(t)}}); err != nil {
		t.Fatal(err)
	}
	before := s.Calls["put"]
	if _, err := backup.BackupDir(ctx, s, dir, backup.Options{}); !errors.Is(err, backup.ErrEncryptionMismatch) {
		t.Fatalf("plaintext backup: %v, want ErrEncryptionMismatch", err)
	}
	if s.Calls["put"] != before {
		t.Fatalf("the refused backup wrote %d objects", s.Calls["put"]-before)
	}
}

// The chunk key file: private, kept while the recipients stay, renewed
// when they change, and a damaged one is an error, not a silent new key.
func TestSealerFor_KeepsTheKeyUntilTheRecipientsChange(t *testing.T) {
	dir := t.TempDir()
	a, b := recipient(t), recipient(t)
	now := time.Now()
	first, err := backup.SealerFor(dir, []age.Recipient{a}, now)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, backup.ChunkKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, st.Mode())
	}
	same, _ := backup.SealerFor(dir, []age.Recipient{a}, now)
	other, _ := backup.SealerFor(dir, []age.Recipient{a, b}, now)
	if same.KeyID() != first.KeyID() || other.KeyID() == first.KeyID() || other.Recipients() == first.Recipients() {
		t.Fatalf("keys %s, %s, %s", first.KeyID(), same.KeyID(), other.KeyID())
	}
	if again, _ := backup.SealerFor(dir, []age.Recipient{b, a}, now); again.KeyID() != other.KeyID() {
		t.Fatal("the order of the recipients changed the key")
	}
	os.WriteFile(filepath.Join(dir, backup.ChunkKeyFile), []byte("garbage"), 0o600)
	if _, err := backup.SealerFor(dir, []age.Recipient{a}, now); err == nil {
		t.Fatal("a damaged key file was replaced silently")
	}
}

// Even with the location's config gone, a partition's own latest backup
// keeps a plaintext backup out of an encrypted chain.
func TestBackup_PlaintextRefusedByTheChainWhenTheConfigIsGone(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	dir, st := flowDir(t, 1, time.Hour)
	commitKeys(t, st, 1, seq(0, 100), "v")
	if _, err := backup.BackupDir(ctx, s, dir, backup.Options{Recipients: []age.Recipient{recipient(t)}}); err != nil {
		t.Fatal(err)
	}
	s.Delete(ctx, backup.ConfigKey)
	res, err := backup.BackupDir(ctx, s, dir, backup.Options{})
	if !errors.Is(err, backup.ErrEncryptionMismatch) || res[0].Manifest != nil {
		t.Fatalf("plaintext backup over an encrypted chain: %v", err)
	}
}

// flipOnce damages the first read of one key, as a network would.
type flipOnce struct {
	*memstore.Store
	key  string
	done bool
}

func (f *flipOnce) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if key != f.key || f.done {
		return f.Store.Get(ctx, key)
	}
	f.done = true
	return io.NopCloser(strings.NewReader(`{"format":"flowkeep-repo/1","encryption":"a`)), nil
}

// A config cut short in transit is read again, like a manifest: it is not
// called damaged, and the backup goes on.
func TestCheckScheme_AConfigDamagedInTransitIsReadAgain(t *testing.T) {
	ctx := context.Background()
	s := &flipOnce{Store: memstore.New(), key: backup.ConfigKey}
	if err := backup.CheckScheme(ctx, s, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	s.done = false
	if err := backup.CheckScheme(ctx, s, true, time.Now()); err != nil || !s.done {
		t.Fatalf("second check, its first read cut short: %v", err)
	}
}
