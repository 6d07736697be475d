package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
)

func newIdentity(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// backupSealed backs up every partition, encrypted to rs.
func (f *flow) backupSealed(rs ...age.Recipient) []*backup.Result {
	f.t.Helper()
	var out []*backup.Result
	for _, p := range f.st.Partitions() {
		r := backup.BackupPartition(context.Background(), f.s, p, backup.Options{Recipients: rs})
		if r.Err != nil {
			f.t.Fatal(r.Err)
		}
		out = append(out, r)
	}
	return out
}

// secretEpoch writes n keys whose values carry a recognisable secret.
func (f *flow) secretEpoch(n int, secret string) {
	f.epochOf(n, func(i int) (string, string) { return fmt.Sprint("user-", i), fmt.Sprintf("%s-%d", secret, i) })
}

func storedObjects(t *testing.T, s backup.Store) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	out := map[string][]byte{}
	err := s.List(ctx, "", "", func(oi backup.ObjectInfo) error {
		b, err := backup.ReadAll(ctx, s, oi.Key, 1<<30)
		out[oi.Key] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// What a bucket reader sees of an encrypted location: no state, no page
// image, no content hashes; chunk names that are not the content's sha256;
// and yet quick verify, list and planning work without any key.
func TestEncrypted_TheBucketNeverSeesStateInTheClear(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 2, s)
	const secret = "alice-card-4111111111111111"
	f.secretEpoch(3000, secret)
	id := newIdentity(t)
	res := f.backupSealed(id.Recipient())
	keys := backup.NewOpener([]age.Identity{id})
	objs := storedObjects(t, s)
	for key, b := range objs {
		for _, leak := range []string{secret, "SQLite format 3", "user-17", res[0].Manifest.Base.SHA256} {
			if bytes.Contains(b, []byte(leak)) {
				t.Fatalf("%s holds %q in the clear", key, leak)
			}
		}
		// zstd's frame magic: a chunk must not be plain compressed data.
		if strings.HasPrefix(key, backup.ChunksPrefix) && bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			t.Fatalf("%s is a bare zstd frame", key)
		}
	}
	cat, err := backup.LoadCatalogWith(ctx, s, 0, keys)
	if err != nil || len(cat.Manifests) != 2 {
		t.Fatal(err)
	}
	for _, m := range cat.Manifests {
		for _, ob := range m.Objects() {
			z, err := m.Cipher().OpenChunk(nil, objs[backup.ChunkKey(ob.SHA256)], ob.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			plain, err := backup.Decompress(nil, z, ob.Size)
			if err != nil {
				t.Fatal(err)
			}
			if backup.SumHex(plain) == ob.SHA256 {
				t.Fatalf("chunk %s is named by its content's sha256", ob.SHA256[:12])
			}
			if m.Cipher().ContentID(plain) != ob.SHA256 {
				t.Fatalf("chunk %s is not named by its keyed hash", ob.SHA256[:12])
			}
		}
	}
	rep, err := Verify(ctx, s, VerifyOptions{})
	if err != nil || rep.Status != StatusHealthy || !rep.Encrypted || rep.Locked != 2 {
		t.Fatalf("quick verify without keys: %+v, %v", rep, err)
	}
	dst := filepath.Join(t.TempDir(), "new")
	if _, err := Restore(ctx, s, dst, Options{Keys: keys}); err != nil {
		t.Fatal(err)
	}
	e, got := loadDir(t, dst)
	if e != 2 || len(got) != 3000 || got["user-17"] != secret+"-17" {
		t.Fatalf("restored epoch %d, %d keys, user-17=%q", e, len(got), got["user-17"])
	}
	if rep, err := Verify(ctx, s, VerifyOptions{Deep: true, Keys: keys}); err != nil || rep.Status != StatusHealthy || rep.ObjectsRead == 0 {
		t.Fatalf("deep verify with the identity: %+v, %v", rep, err)
	}
}

// A missing or wrong identity is said as such: never "corrupt", never a
// fallback to another backup, nothing written.
func TestEncrypted_MissingOrWrongIdentityIsAClearError(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(100)
	f.backupSealed(newIdentity(t).Recipient())
	f.epoch(100)
	f.backupSealed(newIdentity(t).Recipient()) // a later backup to other recipients
	stranger := backup.NewOpener([]age.Identity{newIdentity(t)})
	for _, c := range []struct {
		name string
		keys *backup.Cipher
		want error
	}{
		{"no identity", nil, backup.ErrIdentityRequired},
		{"wrong identity", stranger, backup.ErrWrongIdentity},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "new")
			var notes []string
			_, err := Restore(ctx, s, dst, Options{Keys: c.keys, Note: func(n string) { notes = append(notes, n) }})
			if !errors.Is(err, c.want) || errors.Is(err, backup.ErrCorrupt) || errors.Is(err, ErrNotRestorable) || len(notes) > 0 {
				t.Fatalf("restore: %v (notes %q), want %v", err, notes, c.want)
			}
			if ents, _ := os.ReadDir(dst); len(ents) > 0 {
				t.Fatalf("restore without the key left %d files", len(ents))
			}
			if _, err := Verify(ctx, s, VerifyOptions{Deep: true, Keys: c.keys}); !errors.Is(err, c.want) || strings.Contains(err.Error(), "set )") {
				t.Fatalf("deep verify: %v, want %v (and no empty field)", err, c.want)
			}
		})
	}
}

// Rotation: a new recipient set gets a new chunk key, so the next backup is
// a new base sealed to the new set only, and restores with its identity
// alone; older backups stay readable by the old identity.
func TestEncrypted_RotatingRecipients(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	old, next := newIdentity(t), newIdentity(t)
	f.epoch(500)
	first := f.backupSealed(old.Recipient())[0]
	f.epoch(10)
	again := f.backupSealed(old.Recipient())[0]
	if again.Kind != "delta" || again.Manifest.Encryption.Key != first.Manifest.Encryption.Key {
		t.Fatalf("same recipients: a %s under key %s, want a delta under %s", again.Kind, again.Manifest.Encryption.Key, first.Manifest.Encryption.Key)
	}
	f.epoch(10)
	both := f.backupSealed(old.Recipient(), next.Recipient())[0]
	f.epoch(10)
	rotated := f.backupSealed(next.Recipient())[0]
	if both.Kind != "base" || rotated.Kind != "base" || rotated.Manifest.Encryption.Key == both.Manifest.Encryption.Key {
		t.Fatalf("new recipient sets took a %s and a %s (keys %s, %s), want new bases under new keys", both.Kind, rotated.Kind,
			both.Manifest.Encryption.Key, rotated.Manifest.Encryption.Key)
	}
	onlyNext := backup.NewOpener([]age.Identity{next})
	dst := filepath.Join(t.TempDir(), "new")
	res, err := Restore(ctx, s, dst, Options{Keys: onlyNext})
	if err != nil || res.Plan.Epoch != rotated.Manifest.Epochs.Hi {
		t.Fatalf("restore with the new identity only: %v", err)
	}
	if _, got := loadDir(t, dst); len(got) != 500 {
		t.Fatalf("restored %d keys", len(got))
	}
	// The restored directory carries the chunk key on: its next backup is a
	// delta.
	st, err := recovery.Open(ctx, dst, recovery.Options{FlowName: "t", Intervals: recovery.Intervals{Snapshot: 1e9, Backup: 2e9}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if r := backup.BackupPartition(ctx, s, st.Partitions()[0], backup.Options{Recipients: []age.Recipient{next.Recipient()}}); r.Err != nil || r.Kind != "delta" {
		t.Fatalf("first backup after the restore: %s, %v (%s), want a delta", r.Kind, r.Err, r.BaseNote)
	}
	// The first backups open with the old identity only.
	for _, c := range []struct {
		keys   *backup.Cipher
		locked int
	}{{onlyNext, 2}, {backup.NewOpener([]age.Identity{old}), 2}, {backup.NewOpener([]age.Identity{next, old}), 0}} {
		cat, err := backup.LoadCatalogWith(ctx, s, 0, c.keys)
		if err != nil || len(cat.Broken) > 0 {
			t.Fatal(err, cat.Broken)
		}
		locked := 0
		for _, m := range cat.Manifests {
			if m.Locked {
				locked++
			}
		}
		if locked != c.locked {
			t.Fatalf("%d of %d backups locked, want %d", locked, len(cat.Manifests), c.locked)
		}
	}
}

// Damage stays damage under encryption: a flipped byte in a chunk is
// corrupt (and restore falls back), not a key problem; an index changed
// behind its seal, even with the seal recomputed, is corrupt.
func TestEncrypted_DamageIsCorruptNotAKeyProblem(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	id := newIdentity(t)
	keys := backup.NewOpener([]age.Identity{id})
	f.epoch(200)
	older := f.backupSealed(id.Recipient())[0].Manifest
	f.epoch(200)
	newer := f.backupSealed(id.Recipient())[0].Manifest
	ob := newer.Objects()[len(newer.Objects())-1]
	key := backup.ChunkKey(ob.SHA256)
	b, _ := backup.ReadAll(ctx, s, key, 1<<30)
	b[len(b)-40] ^= 1
	s.Put(ctx, key, b)
	var notes []string
	res, err := Restore(ctx, s, filepath.Join(t.TempDir(), "new"), Options{Keys: keys, Note: func(n string) { notes = append(notes, n) }})
	if err != nil || res.Plan.Epoch != older.Epochs.Hi || len(notes) != 1 || !strings.Contains(notes[0], "damaged") {
		t.Fatalf("restore over a damaged chunk: %v, notes %q", err, notes)
	}
	rep, err := Verify(ctx, s, VerifyOptions{Deep: true, Keys: keys})
	if err != nil || rep.Status != StatusDegraded {
		t.Fatalf("deep verify: %+v, %v", rep, err)
	}

	// A hostile change to the plaintext index, with its seal recomputed.
	mkey := backup.ManifestKey(newer.Flow.UID, 0, newer.ID)
	raw, _ := backup.ReadAll(ctx, s, mkey, 1<<30)
	var lf map[string]json.RawMessage
	if err := json.Unmarshal(raw, &lf); err != nil {
		t.Fatal(err)
	}
	var compact, sealed bytes.Buffer
	json.Compact(&compact, lf["index"])
	was := compact.Len()
	idx := bytes.Replace(compact.Bytes(), []byte(fmt.Sprintf(`"hi":%d`, newer.Epochs.Hi)), []byte(fmt.Sprintf(`"hi":%d`, newer.Epochs.Hi+50)), 1)
	if len(idx) == was {
		t.Fatal("the forgery changed nothing")
	}
	compact.Reset()
	compact.Write(idx)
	var box []byte
	json.Unmarshal(lf["sealed"], &box)
	sealed.Write(compact.Bytes())
	sealed.Write(box)
	sum := sha256.Sum256(sealed.Bytes())
	lf["index"], lf["sha256"] = compact.Bytes(), []byte(`"`+hex.EncodeToString(sum[:])+`"`)
	forged, _ := json.Marshal(lf)
	s.Put(ctx, mkey, forged)
	if _, err := backup.ReadManifestWith(ctx, s, mkey, keys); !errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("forged index: %v, want ErrCorrupt", err)
	}
}

// Prune needs no private key: with the recipients' public keys (the
// agent's) it reads the authenticated plaintext indexes, deletes the old
// backups and their chunks, and what it keeps still restores. With no key
// at all it refuses: it could not tell genuine backups from forged ones.
func TestEncrypted_PruneWithoutAPrivateKey(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 2, s)
	id := newIdentity(t)
	for i := 0; i < 3; i++ {
		f.epoch(400) // every key changes: each backup is a new base
		f.backupSealed(id.Recipient())
	}
	later := func() time.Time { return time.Now().Add(2 * backup.DefaultGrace) }
	if _, err := backup.Prune(ctx, s, backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace, Now: later}); !errors.Is(err, backup.ErrKeysRequired) {
		t.Fatalf("prune with no key: %v, want %v", err, backup.ErrKeysRequired)
	}
	auth, err := backup.NewIndexAuth([]age.Recipient{id.Recipient()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := backup.Prune(ctx, s, backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace, Now: later, Auth: auth})
	if err != nil || len(res.DeletedManifests) != 4 || res.DeletedChunks == 0 {
		t.Fatalf("prune: %+v, %v", res, err)
	}
	if objs := storedObjects(t, s); objs[backup.ConfigKey] == nil {
		t.Fatal("prune deleted the location's config")
	}
	keys := backup.NewOpener([]age.Identity{id})
	if rep, err := Verify(ctx, s, VerifyOptions{Deep: true, Keys: keys}); err != nil || rep.Status != StatusHealthy {
		t.Fatalf("deep verify after prune: %+v, %v", rep, err)
	}
	dst := filepath.Join(t.TempDir(), "new")
	if _, err := Restore(ctx, s, dst, Options{Keys: keys}); err != nil {
		t.Fatal(err)
	}
	if e, got := loadDir(t, dst); e != 4 || len(got) != 400 || got["k3"] != "v3" {
		t.Fatalf("restored epoch %d, %d keys, k3=%q", e, len(got), got["k3"])
	}
}

// The plaintext index of an encrypted manifest says only what list, quick
// verify and prune need: no host, flow name, execution count, intervals,
// key id or recipient fingerprint; locks name no host either.
func TestEncrypted_TheIndexSaysNoMoreThanItMust(t *testing.T) {
	t.Setenv("FLOWKEEP_HOST", "host-that-must-not-leak")
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(100)
	id := newIdentity(t)
	f.backupSealed(id.Recipient())
	lock, err := backup.AcquireLock(ctx, s, "locks/probe.json", "probe", time.Minute, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release(ctx)
	for key, b := range storedObjects(t, s) {
		if bytes.Contains(b, []byte("host-that-must-not-leak")) {
			t.Fatalf("%s names the host", key)
		}
		if !strings.HasPrefix(key, backup.ManifestsPrefix) && !strings.HasPrefix(key, backup.LatestPrefix) {
			continue
		}
		var stored struct {
			Index map[string]json.RawMessage `json:"index"`
		}
		if err := json.Unmarshal(b, &stored); err != nil || stored.Index == nil {
			t.Fatalf("%s: %v", key, err)
		}
		for _, k := range []string{"name", "host", "execution", "intervals", "encryption", "created", "lo_time"} {
			if _, ok := stored.Index[k]; ok {
				t.Fatalf("%s: the index holds %q", key, k)
			}
		}
		if bytes.Contains(stored.Index["lineage"], []byte(`"host"`)) {
			t.Fatalf("%s: the index's lineage names a host", key)
		}
	}
	// And quick verify, list and prune still work on it without a key.
	rep, err := Verify(ctx, s, VerifyOptions{})
	if err != nil || rep.Status != StatusHealthy {
		t.Fatalf("quick verify without a key: %v %+v", err, rep)
	}
}
