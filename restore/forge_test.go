package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// A bucket writer who holds only the recipients' public key (they are
// published by design) replaces a chunk of the newest backup: the same name
// sealed in front, other content, padded to the stored size with a zstd
// skippable frame. Restore must not lay it down: the chunk's keyed name
// (the HMAC of its content under the secret chunk key) gives it away, and
// the restore falls back to the older backup.
func TestEncrypted_APublicKeyHolderCannotReplaceAChunk(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	id := newIdentity(t)
	f.epoch(500)
	f.backupSealed(id.Recipient())
	f.epoch(500)
	newest := f.backupSealed(id.Recipient())[0].Manifest
	keys := backup.NewOpener([]age.Identity{id})

	// The forger's chunk: they know its name and stored size from the
	// plaintext index; the content is theirs. (The test decrypts the real
	// chunk only to build a same-sized, plausible forgery.)
	ob := newest.Objects()[len(newest.Objects())-1]
	real, err := FetchObjectWith(ctx, s, ob, openManifestCipher(t, s, newest, keys))
	if err != nil {
		t.Fatal(err)
	}
	evil := bytes.ReplaceAll(real, []byte("v2"), []byte("v9"))
	if bytes.Equal(evil, real) {
		t.Fatal("nothing to forge")
	}
	enc, _ := zstd.NewWriter(nil)
	z := enc.EncodeAll(evil, nil)
	name, _ := hex.DecodeString(ob.SHA256)
	seal := func(pad int) []byte {
		var buf bytes.Buffer
		w, err := age.Encrypt(&buf, id.Recipient())
		if err != nil {
			t.Fatal(err)
		}
		w.Write(name)
		w.Write(z)
		if pad > 0 {
			frame := make([]byte, 8+pad) // a zstd skippable frame: magic, length, bytes
			binary.LittleEndian.PutUint32(frame, 0x184D2A50)
			binary.LittleEndian.PutUint32(frame[4:], uint32(pad))
			w.Write(frame)
		}
		w.Close()
		return buf.Bytes()
	}
	pad := int(ob.Stored) - len(seal(0)) - 8
	if pad < 0 {
		t.Skipf("the forgery is larger than the chunk (%d bytes over)", -pad)
	}
	forged := seal(pad)
	if int64(len(forged)) != ob.Stored {
		t.Fatalf("forgery of %d bytes, want %d", len(forged), ob.Stored)
	}
	if err := s.Put(ctx, backup.ChunkKey(ob.SHA256), forged); err != nil {
		t.Fatal(err)
	}

	dst := filepath.Join(t.TempDir(), "r")
	res, err := Restore(ctx, s, dst, Options{Keys: keys})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if len(res.Fallbacks) == 0 || res.Plan.Chosen[0].ID == newest.ID {
		t.Fatalf("restore used the backup with the forged chunk (fallbacks %v)", res.Fallbacks)
	}
	_, state := loadDir(t, dst)
	for k, v := range state {
		if v != "v1" {
			t.Fatalf("restored %s=%s: not the older backup's state", k, v)
		}
	}
	rep, err := Verify(ctx, s, VerifyOptions{Deep: true, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusDegraded || !strings.Contains(fmt.Sprint(rep.Problems), ob.SHA256[:12]) {
		t.Fatalf("deep verify: %s %v", rep.Status, rep.Problems)
	}
}

// openManifestCipher reads m again with keys: the Cipher its chunks open
// with.
func openManifestCipher(t *testing.T, s backup.Store, m *backup.Manifest, keys *backup.Cipher) *backup.Cipher {
	t.Helper()
	om, err := backup.ReadManifestWith(context.Background(), s, backup.ManifestKey(m.Flow.UID, m.Partition.Index, m.ID), keys)
	if err != nil || om.Locked {
		t.Fatalf("open manifest %s: %v", m.ID, err)
	}
	return om.Cipher()
}

// A manifest whose chunk list is intact but whose image sha256 is not (a
// writer re-sealed it) is refused by restore and by deep verify: every
// image is checked against its sha256, every time.
func TestRestore_ImageSHA256IsChecked(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(100)
	f.backupAll()
	f.epoch(100)
	newest := f.backupAll()[0]
	wrong := strings.Repeat("0", 64)
	forge(t, s, newest, func(m *backup.Manifest) {
		if m.Delta != nil {
			m.Delta.SHA256 = wrong
		} else {
			m.Base.SHA256 = wrong
		}
	})
	dst := filepath.Join(t.TempDir(), "r")
	res, err := Restore(ctx, s, dst, Options{})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if len(res.Fallbacks) != 1 || !strings.Contains(res.Fallbacks[0], "do not match the sha256") {
		t.Fatalf("fallbacks %v", res.Fallbacks)
	}
	rep, err := Verify(ctx, s, VerifyOptions{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusDegraded || !strings.Contains(fmt.Sprint(rep.Problems), "sha256") {
		t.Fatalf("deep verify: %s %v", rep.Status, rep.Problems)
	}
}

// A bucket writer without any key copies their own plaintext backup (same
// flow uid, newer epochs) into an age-encrypted location. Restore with the
// identity used to lay it down; now a plaintext manifest there is a stray:
// never restored, reported by verify, not counted (nor deleted) by prune.
func TestEncrypted_InjectedPlaintextIsNeverRestored(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	id := newIdentity(t)
	f.epoch(50)
	genuine := f.backupSealed(id.Recipient())[0].Manifest
	keys := backup.NewOpener([]age.Identity{id})
	// The attacker's backup: the same flow's partition, run on, backed up
	// in the clear to their own store, then copied in.
	f.epochOf(50, func(i int) (string, string) { return fmt.Sprint("k", i), "evil" })
	evil := memstore.New()
	if r := backup.BackupPartition(ctx, evil, f.st.Partitions()[0], backup.Options{}); r.Err != nil {
		t.Fatal(r.Err)
	}
	err := evil.List(ctx, "", "", func(oi backup.ObjectInfo) error {
		b, err := backup.ReadAll(ctx, evil, oi.Key, 1<<30)
		if err == nil && !strings.HasPrefix(oi.Key, backup.LatestPrefix) {
			err = s.Put(ctx, oi.Key, b)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []*backup.Cipher{keys, nil} {
		cat, err := backup.LoadTrustedCatalog(ctx, s, backup.ReadPolicy{Keys: k})
		if err != nil {
			t.Fatal(err)
		}
		if len(cat.Strays) != 1 || len(cat.Manifests) != 1 || cat.Manifests[0].ID != genuine.ID {
			t.Fatalf("keys %v: believed %d, strays %d", k != nil, len(cat.Manifests), len(cat.Strays))
		}
	}
	dst := filepath.Join(t.TempDir(), "r")
	res, err := Restore(ctx, s, dst, Options{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if res.Plan.Chosen[0].ID != genuine.ID {
		t.Fatalf("restored backup %s, not the genuine %s", res.Plan.Chosen[0].ID, genuine.ID)
	}
	if _, state := loadDir(t, dst); state["k0"] == "evil" {
		t.Fatal("restored the injected state")
	}
	rep, err := Verify(ctx, s, VerifyOptions{})
	if err != nil || rep.Status != StatusDegraded || !strings.Contains(fmt.Sprint(rep.Problems), "a plaintext backup in an encrypted location") {
		t.Fatalf("verify: %v %s %v", err, rep.Status, rep.Problems)
	}
}

// forgeIndex copies the stored manifest m as a bucket writer without any
// key can: its index edited (a current id, a higher epoch), the sha256
// recomputed, the sealed bytes and tags kept as they were.
func forgeIndex(t *testing.T, s *memstore.Store, m *backup.Manifest, id string, hi uint64) {
	t.Helper()
	ctx := context.Background()
	b, err := backup.ReadAll(ctx, s, backup.ManifestKey(m.Flow.UID, m.Partition.Index, m.ID), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	var lf map[string]json.RawMessage
	if err := json.Unmarshal(b, &lf); err != nil {
		t.Fatal(err)
	}
	var ix map[string]any
	if err := json.Unmarshal(lf["index"], &ix); err != nil {
		t.Fatal(err)
	}
	ix["id"], ix["hi"] = id, hi
	idx, _ := json.Marshal(ix)
	var sealed []byte
	if err := json.Unmarshal(lf["sealed"], &sealed); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	h.Write(idx)
	h.Write(sealed)
	lf["index"] = idx
	lf["sha256"], _ = json.Marshal(hex.EncodeToString(h.Sum(nil)))
	out, _ := json.Marshal(lf)
	if err := s.Put(ctx, backup.ManifestKey(m.Flow.UID, m.Partition.Index, id), out); err != nil {
		t.Fatal(err)
	}
}

// A bucket writer who holds no key at all (a leaked bucket credential)
// copies the newest encrypted manifests under current ids claiming epoch
// 999. Prune, with the agent's recipients file, must not count them (so
// deletes no genuine backup), and quick verify must report them and keep
// saying what the genuine backups restore; without any key, quick verify
// says it could not authenticate, and prune refuses.
func TestEncrypted_AKeylessWriterCannotMakePruneDeleteOrVerifyLie(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 2, s)
	id := newIdentity(t)
	var newest []*backup.Result
	for i := 0; i < 3; i++ {
		f.epoch(50)
		newest = f.backupSealed(id.Recipient())
	}
	genuine := len(storedManifests(t, s))
	now := time.Now()
	for i, r := range newest {
		forgeIndex(t, s, r.Manifest, backup.NewBackupID(now.Add(time.Duration(i+1)*time.Second)), 999)
	}
	auth, err := backup.NewIndexAuth([]age.Recipient{id.Recipient()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(ctx, s, VerifyOptions{Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	fr := rep.Flows[0]
	if fr.Epoch == 999 || len(rep.Problems) != 2 || !strings.Contains(rep.Problems[0].Message, "not tagged") || rep.Unauthenticated {
		t.Fatalf("quick verify with the recipients: epoch %d, problems %+v", fr.Epoch, rep.Problems)
	}
	if rep, err := Verify(ctx, s, VerifyOptions{}); err != nil || !rep.Unauthenticated || !strings.Contains(fmt.Sprint(rep.Notes), "not authenticated") {
		t.Fatalf("quick verify without keys must say it could not authenticate: %+v, %v", rep, err)
	}
	later := func() time.Time { return now.Add(2 * backup.DefaultGrace) }
	res, err := backup.Prune(ctx, s, backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace, Now: later, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DeletedManifests) != genuine-2 || len(res.Ignored) != 2 {
		t.Fatalf("prune deleted %v, ignored %v; want the 4 older genuine backups deleted, the 2 forgeries ignored", res.DeletedManifests, res.Ignored)
	}
	keys := backup.NewOpener([]age.Identity{id})
	dst := filepath.Join(t.TempDir(), "new")
	if _, err := Restore(ctx, s, dst, Options{Keys: keys}); err != nil {
		t.Fatal(err)
	}
	if e, got := loadDir(t, dst); e != 4 || len(got) != 50 {
		t.Fatalf("restored epoch %d with %d keys", e, len(got))
	}
}

func storedManifests(t *testing.T, s backup.Store) []string {
	t.Helper()
	var out []string
	for k := range storedObjects(t, s) {
		if strings.HasPrefix(k, backup.ManifestsPrefix) {
			out = append(out, k)
		}
	}
	return out
}

// Quarantine markers are hints that anyone who can write to the bucket can
// leave. A quick verify reports them, but does not call a location whose
// backups a restore reads whole "not restorable" because of them.
func TestVerify_AForgedQuarantineMarkerIsReportedNotBelieved(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(30)
	newest := f.backupAll()
	for _, ob := range newest[0].Objects() {
		if err := backup.Quarantine(ctx, s, ob.SHA256, "forged", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := Verify(ctx, s, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusDegraded || !rep.Flows[0].Restorable || rep.Flows[0].Epoch != newest[0].Epochs.Hi || len(rep.Problems) != 1 {
		t.Fatalf("quick verify: %s, flow %+v, problems %+v", rep.Status, rep.Flows[0], rep.Problems)
	}
	dst := filepath.Join(t.TempDir(), "r")
	if res, err := Restore(ctx, s, dst, Options{}); err != nil || res.Plan.Epoch != newest[0].Epochs.Hi {
		t.Fatalf("restore: %v", err)
	}
}
