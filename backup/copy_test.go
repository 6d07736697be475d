package backup_test

import (
	"context"
	"errors"
	"io"
	"maps"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// named is a memstore with its own name (Copy refuses to copy a location
// onto one of the same name).
type named struct {
	*memstore.Store
	name string
}

func (n named) String() string { return n.name }

func newNamed(name string) named { return named{memstore.New(), "mem://" + name} }

// keys lists a store's keys under prefix.
func keys(t *testing.T, s backup.Store, prefix string) []string {
	t.Helper()
	var out []string
	if err := s.List(context.Background(), prefix, "", func(oi backup.ObjectInfo) error {
		out = append(out, oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// twoBackups backs a 2-partition flow up twice into a (a base and a
// delta per partition) and returns the recovery directory.
func twoBackups(t *testing.T, a backup.Store, o backup.Options) string {
	t.Helper()
	ctx := context.Background()
	dir, st := flowDir(t, 2, time.Hour)
	commitKeys(t, st, 1, seq(0, 20000), "v")
	if _, err := backup.BackupDir(ctx, a, dir, o); err != nil {
		t.Fatal(err)
	}
	commitKeys(t, st, 2, seq(0, 100), "w")
	if _, err := backup.BackupDir(ctx, a, dir, o); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A copy brings every backup, pointer and registry event of A into B as
// stored; a second copy moves nothing; the copied backups restore the
// same state as the originals.
func TestCopy_CompleteThenIncremental(t *testing.T) {
	ctx := context.Background()
	a, b := newNamed("a"), newNamed("b")
	dir := twoBackups(t, a, backup.Options{})
	res, err := backup.Copy(ctx, a, b, backup.CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.CopiedBackups != 4 || res.CopiedObjects == 0 || len(res.NotCopied) != 0 {
		t.Fatalf("first copy: %+v", res)
	}
	for _, prefix := range []string{backup.ManifestsPrefix, backup.ChunksPrefix, backup.LatestPrefix, backup.LineagesPrefix} {
		if got, want := keys(t, b, prefix), keys(t, a, prefix); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("%s: B holds %d objects, A %d", prefix, len(got), len(want))
		}
		for _, k := range keys(t, a, prefix) {
			x, _ := backup.ReadAll(ctx, a, k, 1<<30)
			y, _ := backup.ReadAll(ctx, b, k, 1<<30)
			if string(x) != string(y) {
				t.Fatalf("%s differs between A and B", k)
			}
		}
	}
	if n := len(keys(t, b, backup.LocksPrefix)); n != 0 {
		t.Fatalf("the copy left %d locks in B", n)
	}
	again, err := backup.Copy(ctx, a, b, backup.CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.CopiedObjects != 0 || again.CopiedBytes != 0 || again.SkippedBackups != 4 {
		t.Fatalf("second copy: %+v", again)
	}
	cat, err := backup.LoadCatalog(ctx, b, 0)
	if err != nil || len(cat.Manifests) != 4 || len(cat.Broken) != 0 {
		t.Fatalf("B's catalog: %v %+v", err, cat)
	}
	for _, m := range cat.Manifests {
		if m.Delta == nil {
			continue
		}
		live := filepath.Join(dir, "part-"+string(rune('0'+m.Partition.Index))+".sqlite3")
		if got, want := stateAt(t, restoreTo(t, b, m), 2), stateAt(t, live, 2); !maps.Equal(got, want) {
			t.Fatalf("partition %d restored from B differs from the live one", m.Partition.Index)
		}
	}
}

// hideChunk makes one chunk of A unreadable after it was listed: a prune
// in A deleted it during the copy.
type hideChunk struct {
	named
	key   string
	gets  atomic.Int64
	after int64 // reads of it that still work
}

func (h *hideChunk) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if key == h.key && h.gets.Add(1) > h.after {
		return nil, backup.ErrNotFound
	}
	return h.named.Get(ctx, key)
}

// A backup is published in B only once every chunk it names is there: a
// chunk missing in A (listed missing, or gone by the time it is read)
// keeps its backups, and those chunks of theirs no other backup needs,
// out of B; the others are copied.
func TestCopy_ABackupWhoseChunksAreMissingIsNotCopied(t *testing.T) {
	ctx := context.Background()
	for _, listed := range []bool{true, false} {
		t.Run(map[bool]string{true: "missing when listed", false: "deleted during the copy"}[listed], func(t *testing.T) {
			a := newNamed("a")
			dir, st := flowDir(t, 1, time.Hour)
			commitKeys(t, st, 1, seq(0, 20000), "v")
			first, err := backup.BackupDir(ctx, a, dir, backup.Options{})
			if err != nil {
				t.Fatal(err)
			}
			commitKeys(t, st, 2, seq(0, 100), "w")
			second, err := backup.BackupDir(ctx, a, dir, backup.Options{})
			if err != nil {
				t.Fatal(err)
			}
			gone := second[0].Manifest.Delta.Chunks[0].SHA256
			h := &hideChunk{named: a, key: backup.ChunkKey(gone)}
			if listed {
				a.Delete(ctx, backup.ChunkKey(gone))
			}
			b := newNamed("b")
			res, err := backup.Copy(ctx, h, b, backup.CopyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.CopiedBackups != 1 || len(res.NotCopied) != 1 || res.NotCopied[0].Kind != backup.NotCopiedMissing || res.NotCopied[0].Backup != second[0].Manifest.ID {
				t.Fatalf("copy: %+v", res)
			}
			ms := keys(t, b, backup.ManifestsPrefix)
			if len(ms) != 1 || !strings.Contains(ms[0], first[0].Manifest.ID) {
				t.Fatalf("B holds manifests %v, want only the first backup's", ms)
			}
			if got := keys(t, b, backup.ChunkKey(gone)); len(got) != 0 {
				t.Fatal("the missing chunk is in B")
			}
			// B's latest pointer names what B holds, not A's newer backup.
			m, err := backup.LoadLatest(ctx, b, first[0].Manifest.Flow.UID, 0)
			if err != nil || m == nil || m.ID != first[0].Manifest.ID {
				t.Fatalf("B's latest pointer: %v %v", m, err)
			}
		})
	}
}

// B's lock model: the copy writes a partition under B's partition lock,
// and does not start while a prune runs in B; a partition another writer
// holds is left for the next copy, and the copy says how far B is behind.
func TestCopy_RespectsTheLocksOfB(t *testing.T) {
	ctx := context.Background()
	a := newNamed("a")
	twoBackups(t, a, backup.Options{})
	cat, _ := backup.LoadCatalog(ctx, a, 0)
	uid := cat.Manifests[0].Flow.UID

	b := newNamed("b")
	prune, err := backup.AcquirePruneLock(ctx, b, "a prune", time.Minute, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Copy(ctx, a, b, backup.CopyOptions{}); !errors.Is(err, backup.ErrLocked) {
		t.Fatalf("copy while a prune runs in B: %v", err)
	}
	if n := len(keys(t, b, backup.ManifestsPrefix)); n != 0 {
		t.Fatalf("a copy during a prune wrote %d manifests", n)
	}
	prune.Release(ctx)

	held, err := backup.AcquireLock(ctx, b, backup.LockKey(uid, 1), "another agent", time.Minute, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	res, err := backup.Copy(ctx, a, b, backup.CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldest, _ := backup.BackupIDTime(cat.Manifests[2].ID) // partition 1's first
	if res.CopiedBackups != 2 || len(res.NotCopied) != 2 || res.NotCopied[0].Kind != backup.NotCopiedLocked || !res.Behind.Equal(oldest) {
		t.Fatalf("copy with partition 1 locked: %+v", res)
	}
	held.Release(ctx)
	res, err = backup.Copy(ctx, a, b, backup.CopyOptions{})
	if err != nil || res.CopiedBackups != 2 || !res.Behind.IsZero() {
		t.Fatalf("the next copy: %v %+v", err, res)
	}
}

// Encrypted and signed backups are copied as stored, with no key; B gets
// A's config, and a location of another scheme is refused before
// anything is written.
func TestCopy_SchemesAndConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := backup.GenerateSigningKey(filepath.Join(dir, "signing.key")); err != nil {
		t.Fatal(err)
	}
	signing, err := backup.LoadSigningKey(filepath.Join(dir, "signing.key"))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := age.GenerateX25519Identity()
	enc := newNamed("enc")
	twoBackups(t, enc, backup.Options{Recipients: []age.Recipient{id.Recipient()}, SigningKey: signing})
	plain := newNamed("plain")
	twoBackups(t, plain, backup.Options{})

	b := newNamed("b")
	res, err := backup.Copy(ctx, enc, b, backup.CopyOptions{})
	if err != nil || !res.ConfigCreated || res.CopiedBackups != 4 {
		t.Fatalf("copy of an encrypted, signed location: %v %+v", err, res)
	}
	cfg, err := backup.ReadConfig(ctx, b)
	if err != nil || cfg == nil || cfg.Encryption != backup.SchemeAge || !cfg.Signed {
		t.Fatalf("B's config: %+v %v", cfg, err)
	}
	// B believes the copies as A does: signed by the key, tagged for the
	// recipient, opened by the identity.
	cat, err := backup.LoadTrustedCatalog(ctx, b, backup.ReadPolicy{Trusted: signing.Public(), RequireTrust: true, Keys: backup.NewOpener([]age.Identity{id})})
	if err != nil || len(cat.Manifests) != 4 || len(cat.Strays) != 0 || cat.Manifests[0].Locked {
		t.Fatalf("B's catalog with the keys: %v %d believed, %d strays", err, len(cat.Manifests), len(cat.Strays))
	}

	for _, c := range []struct {
		name     string
		from, to backup.Store
		want     error
	}{
		{"plaintext into encrypted", plain, b, backup.ErrEncryptionMismatch},
		{"encrypted into plaintext", enc, plain, backup.ErrEncryptionMismatch},
	} {
		before := len(keys(t, c.to, ""))
		if _, err := backup.Copy(ctx, c.from, c.to, backup.CopyOptions{}); !errors.Is(err, c.want) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.want)
		}
		if after := len(keys(t, c.to, "")); after != before {
			t.Fatalf("%s: a refused copy wrote %d objects", c.name, after-before)
		}
	}
	signedPlain := newNamed("signed-plain")
	twoBackups(t, signedPlain, backup.Options{SigningKey: signing})
	if _, err := backup.Copy(ctx, signedPlain, newNamed("x"), backup.CopyOptions{}); err != nil {
		t.Fatalf("signed into empty: %v", err)
	}
	if _, err := backup.Copy(ctx, signedPlain, plain, backup.CopyOptions{}); !errors.Is(err, backup.ErrSigningMismatch) {
		t.Fatalf("signed into unsigned: %v", err)
	}
	if _, err := backup.Copy(ctx, plain, plain, backup.CopyOptions{}); !errors.Is(err, backup.ErrSameLocation) {
		t.Fatalf("onto itself: %v", err)
	}
}

// A chunk B holds damaged: verify --deep's quarantine marker makes the
// next copy write it again (and clear the marker); a damaged copy of the
// same size nobody quarantined is found by Checksum, not by the listing.
func TestCopy_HealsDamagedChunksInB(t *testing.T) {
	ctx := context.Background()
	a, b := newNamed("a"), newNamed("b")
	twoBackups(t, a, backup.Options{})
	if _, err := backup.Copy(ctx, a, b, backup.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	// The newest backups are copied again only if they are missing: drop
	// them from B, damage one of their chunks there.
	cat, _ := backup.LoadCatalog(ctx, b, 0)
	newest := cat.Manifests[1]
	b.Delete(ctx, cat.Keys[newest])
	h := newest.Base.Chunks[0].SHA256
	flip := func([]byte) {
		b.Mutate(backup.ChunkKey(h), func(d []byte) []byte { d = append([]byte(nil), d...); d[len(d)/2] ^= 1; return d })
	}
	flip(nil)
	res, err := backup.Copy(ctx, a, b, backup.CopyOptions{})
	if err != nil || res.CopiedBackups != 1 || res.HealedChunks != 0 {
		t.Fatalf("copy without Checksum: %v %+v", err, res)
	}
	res, err = backup.Copy(ctx, a, b, backup.CopyOptions{Checksum: true})
	if err != nil || res.HealedChunks != 1 || res.CopiedChunks != 1 || res.CopiedBackups != 0 {
		t.Fatalf("copy with Checksum: %v %+v", err, res)
	}
	x, _ := backup.ReadAll(ctx, a, backup.ChunkKey(h), 1<<30)
	y, _ := backup.ReadAll(ctx, b, backup.ChunkKey(h), 1<<30)
	if string(x) != string(y) {
		t.Fatal("the damaged chunk was not healed")
	}
	flip(nil)
	if err := backup.Quarantine(ctx, b, h, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	res, err = backup.Copy(ctx, a, b, backup.CopyOptions{})
	if err != nil || res.HealedChunks != 0 {
		t.Fatalf("a copy of nothing new looks at no chunk: %v %+v", err, res)
	}
	b.Delete(ctx, cat.Keys[newest])
	res, err = backup.Copy(ctx, a, b, backup.CopyOptions{})
	if err != nil || res.HealedChunks != 1 || len(keys(t, b, backup.QuarantinePrefix)) != 0 {
		t.Fatalf("copy over a quarantined chunk: %v %+v", err, res)
	}
}

// Strays are not copied: a plaintext manifest in an encrypted location
// (anyone who can write to the bucket can make one) stays in A.
func TestCopy_LeavesStraysOut(t *testing.T) {
	ctx := context.Background()
	enc, plain := newNamed("enc"), newNamed("plain")
	twoBackups(t, enc, backup.Options{Recipients: []age.Recipient{recipient(t)}})
	twoBackups(t, plain, backup.Options{})
	pcat, _ := backup.LoadCatalog(ctx, plain, 0)
	m := pcat.Manifests[0]
	data, _ := backup.ReadAll(ctx, plain, pcat.Keys[m], 1<<30)
	enc.Put(ctx, pcat.Keys[m], data)
	b := newNamed("b")
	res, err := backup.Copy(ctx, enc, b, backup.CopyOptions{})
	if err != nil || res.CopiedBackups != 4 || len(res.NotCopied) != 1 || res.NotCopied[0].Kind != backup.NotCopiedStray {
		t.Fatalf("copy: %v %+v", err, res)
	}
	if _, err := backup.ReadAll(ctx, b, pcat.Keys[m], 1<<30); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("the stray is in B: %v", err)
	}
}

// Copy with FlowUID and Partitions copies only those partitions' backups
// and pointers.
func TestCopy_OnlyThePartitionsAsked(t *testing.T) {
	ctx := context.Background()
	a, b := newNamed("a"), newNamed("b")
	twoBackups(t, a, backup.Options{})
	cat, _ := backup.LoadCatalog(ctx, a, 0)
	uid := cat.Manifests[0].Flow.UID
	res, err := backup.Copy(ctx, a, b, backup.CopyOptions{FlowUID: uid, Partitions: []int{1}})
	if err != nil || res.CopiedBackups != 2 {
		t.Fatalf("copy: %v %+v", err, res)
	}
	for _, k := range append(keys(t, b, backup.ManifestsPrefix), keys(t, b, backup.LatestPrefix)...) {
		if !strings.Contains(k, "part-0001") {
			t.Fatalf("B holds %s", k)
		}
	}
}
