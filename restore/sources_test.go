package restore

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// place is a store under its own name, failing as a test says.
type place struct {
	backup.Store
	name string
	// listErr fails every listing (the location is unreachable); getErr
	// every read of a chunk.
	listErr, getErr error
}

func (p *place) String() string { return p.name }

func (p *place) List(ctx context.Context, prefix, after string, fn func(backup.ObjectInfo) error) error {
	if p.listErr != nil {
		return p.listErr
	}
	return p.Store.List(ctx, prefix, after, fn)
}

func (p *place) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if p.getErr != nil && strings.HasPrefix(key, backup.ChunksPrefix) {
		return nil, p.getErr
	}
	return p.Store.Get(ctx, key)
}

func (p *place) GetVersion(ctx context.Context, key string, limit int64) ([]byte, backup.ObjectVersion, error) {
	if p.getErr != nil && strings.HasPrefix(key, backup.ChunksPrefix) {
		return nil, "", p.getErr
	}
	return p.Store.GetVersion(ctx, key, limit)
}

// copyAll copies every object of from into to, as stored (what
// flowbackup copy, or a plain file copy, leaves).
func copyAll(t *testing.T, from, to backup.Store) {
	t.Helper()
	ctx := context.Background()
	err := from.List(ctx, "", "", func(oi backup.ObjectInfo) error {
		b, err := backup.ReadAll(ctx, from, oi.Key, 1<<30)
		if err != nil {
			return err
		}
		return to.Put(ctx, oi.Key, b)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// twoPlaces backs up a flow of 3 partitions twice (older, then newest)
// into A and copies it to B.
func twoPlaces(t *testing.T) (a, b *place, f *flow, older, newest []*backup.Manifest) {
	t.Helper()
	ma := memstore.New()
	f = newFlow(t, 3, ma)
	f.epoch(50)
	older = f.backupAll()
	f.epoch(50)
	f.epoch(50)
	newest = f.backupAll()
	a, b = &place{Store: ma, name: "mem://a"}, &place{Store: memstore.New(), name: "mem://b"}
	copyAll(t, a, b)
	return a, b, f, older, newest
}

func restoreFrom(t *testing.T, stores ...backup.Store) (*Result, []string) {
	t.Helper()
	var notes []string
	dst := filepath.Join(t.TempDir(), "new")
	res, err := RestoreFrom(context.Background(), stores, dst, Options{Note: func(s string) { notes = append(notes, s) }})
	if err != nil {
		t.Fatalf("restore from %v: %v (notes: %q)", stores, err, notes)
	}
	e, got := loadDir(t, dst)
	if e != 4 || got["k7"] != "v3" || len(got) != 50 {
		t.Fatalf("resumed at %d with k7=%q (%d keys), want the newest state", e, got["k7"], len(got))
	}
	return res, notes
}

func chunksOf(ms []*backup.Manifest) []string {
	var out []string
	for _, m := range ms {
		for _, ob := range m.Objects() {
			out = append(out, backup.ChunkKey(ob.SHA256))
		}
	}
	return out
}

// Two locations holding the same backups: each counts once, and what one
// location lacks, damaged or unreachable, is read from the other before
// the restore falls back to an older backup, and the restore says so.
func TestRestoreFrom_SeveralLocations(t *testing.T) {
	ctx := context.Background()
	t.Run("the same backups count once", func(t *testing.T) {
		a, b, _, _, _ := twoPlaces(t)
		src, err := loadSources(ctx, []backup.Store{a, b}, backup.ReadPolicy{}, &PlanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(src.manifests) != 6 || len(src.takeNotes()) != 0 {
			t.Fatalf("%d manifests over two copies of 6", len(src.manifests))
		}
		for m, h := range src.holders {
			if len(h) != 2 {
				t.Fatalf("backup %s is held by %v, want both", m.ID, h)
			}
		}
		res, _ := restoreFrom(t, a, b)
		if res.ReadFrom["mem://b"] != 0 || res.ReadFrom["mem://a"] == 0 || len(res.Fallbacks) != 0 {
			t.Fatalf("read %v with fallbacks %q; want everything from the first location", res.ReadFrom, res.Fallbacks)
		}
	})
	t.Run("chunks missing in the first are read from the second", func(t *testing.T) {
		a, b, _, _, newest := twoPlaces(t)
		for _, k := range chunksOf(newest)[:2] {
			a.Delete(ctx, k)
		}
		res, notes := restoreFrom(t, a, b)
		if res.Plan.Epoch != 4 || res.ReadFrom["mem://b"] == 0 || !strings.Contains(strings.Join(notes, "\n"), "from mem://b that mem://a is missing") {
			t.Fatalf("epoch %d, read %v, notes %q", res.Plan.Epoch, res.ReadFrom, notes)
		}
	})
	t.Run("a chunk damaged in the first is read from the second", func(t *testing.T) {
		a, b, _, _, newest := twoPlaces(t)
		a.Store.(*memstore.Store).Mutate(chunksOf(newest)[0], func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
		_, notes := restoreFrom(t, a, b)
		if !strings.Contains(strings.Join(notes, "\n"), "from mem://b that mem://a holds damaged") {
			t.Fatalf("notes %q", notes)
		}
	})
	t.Run("an unreachable location is skipped", func(t *testing.T) {
		a, b, _, _, _ := twoPlaces(t)
		a.listErr = errors.New("dial tcp: connection refused")
		res, notes := restoreFrom(t, a, b)
		all := strings.Join(notes, "\n")
		if !strings.Contains(all, "location mem://a cannot be read (") || !strings.Contains(all, "connection refused): skipped") || res.ReadFrom["mem://b"] == 0 {
			t.Fatalf("notes %q, read %v", notes, res.ReadFrom)
		}
		// Alone, it is an error, as it always was.
		if _, err := RestoreFrom(ctx, []backup.Store{a}, filepath.Join(t.TempDir(), "x"), Options{}); err == nil || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("the only location unreachable: %v", err)
		}
	})
	t.Run("a location failing mid-restore is not asked again", func(t *testing.T) {
		a, b, _, _, _ := twoPlaces(t)
		a.getErr = errors.New("read: connection reset by peer")
		res, notes := restoreFrom(t, a, b)
		all := strings.Join(notes, "\n")
		if strings.Count(all, "location mem://a failed during the restore") != 1 || res.ReadFrom["mem://a"] != 0 {
			t.Fatalf("notes %q, read %v", notes, res.ReadFrom)
		}
	})
	t.Run("missing everywhere: an older backup", func(t *testing.T) {
		a, b, _, older, newest := twoPlaces(t)
		// What only partition 1's newest backup names is gone from both.
		keep := map[string]bool{}
		for _, k := range chunksOf(older) {
			keep[k] = true
		}
		for _, k := range chunksOf(newest[1:2]) {
			if !keep[k] {
				a.Delete(ctx, k)
				b.Delete(ctx, k)
			}
		}
		var notes []string
		res, err := RestoreFrom(ctx, []backup.Store{a, b}, filepath.Join(t.TempDir(), "x"), Options{Note: func(s string) { notes = append(notes, s) }})
		if err != nil || res.Plan.Epoch != 2 || !strings.Contains(strings.Join(notes, "\n"), "fell back from epoch 4 to epoch 2") {
			t.Fatalf("epoch %v, %v, notes %q", res, err, notes)
		}
	})
	t.Run("a location with only older backups still counts", func(t *testing.T) {
		a, b, f, _, _ := twoPlaces(t)
		// A third backup lands in A only; B is all that is left of the
		// others' chunks, A of the newest manifest's.
		f.epoch(50)
		newer := f.backupAll()
		ms, err := loadSources(ctx, []backup.Store{b, a}, backup.ReadPolicy{}, &PlanOptions{})
		if err != nil || len(ms.manifests) != 9 {
			t.Fatalf("%v, %v", ms, err)
		}
		for _, m := range newer {
			if h := ms.holders[m2(ms.manifests, m.ID)]; len(h) != 1 || ms.locs[h[0]].store != a {
				t.Fatalf("backup %s is held by %v, want A alone", m.ID, h)
			}
		}
	})
}

// m2 finds the manifest of id among ms.
func m2(ms []*backup.Manifest, id string) *backup.Manifest {
	for _, m := range ms {
		if m.ID == id {
			return m
		}
	}
	return nil
}

// Each location's rules apply to what it holds: an unsigned backup a
// bucket writer put into the copy of a signed location is a stray there,
// never restored, though it is newer; without trusted keys the restore
// refuses, as it does for one signed location.
func TestRestoreFrom_EachLocationsTrustRules(t *testing.T) {
	ctx := context.Background()
	keyPath := filepath.Join(t.TempDir(), "signing.key")
	if _, err := backup.GenerateSigningKey(keyPath); err != nil {
		t.Fatal(err)
	}
	k, err := backup.LoadSigningKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	a, b := &place{Store: memstore.New(), name: "mem://a"}, &place{Store: memstore.New(), name: "mem://b"}
	f := newFlow(t, 2, nil)
	f.epoch(50)
	f.epoch(50)
	for _, p := range f.st.Partitions() {
		if r := backup.BackupPartition(ctx, a, p, backup.Options{SigningKey: k}); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	copyAll(t, a, b)
	// The forger's newer, unsigned backups of the same flow, copied into B.
	f.epoch(50)
	forged := memstore.New()
	for _, p := range f.st.Partitions() {
		if r := backup.BackupPartition(ctx, forged, p, backup.Options{}); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	err = forged.List(ctx, "", "", func(oi backup.ObjectInfo) error {
		if !strings.HasPrefix(oi.Key, backup.ManifestsPrefix) && !strings.HasPrefix(oi.Key, backup.ChunksPrefix) {
			return nil
		}
		data, err := backup.ReadAll(ctx, forged, oi.Key, 1<<30)
		if err != nil {
			return err
		}
		return b.Put(ctx, oi.Key, data)
	})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := PlanFrom(ctx, forged, PlanOptions{}); err != nil || p.Epoch != 4 {
		t.Fatalf("the forged backups restore %v (%v), want epoch 4", p, err)
	}
	for _, stores := range [][]backup.Store{{a, b}, {b, a}, {b}} {
		res, err := RestoreFrom(ctx, stores, filepath.Join(t.TempDir(), "x"), Options{DryRun: true, Plan: PlanOptions{Trusted: k.Public()}})
		if err != nil || res.Plan.Epoch != 3 {
			t.Fatalf("from %v: %v, %v; want the signed epoch 3", stores, res, err)
		}
	}
	if _, err := RestoreFrom(ctx, []backup.Store{a, b}, filepath.Join(t.TempDir(), "y"), Options{DryRun: true}); !errors.Is(err, backup.ErrTrustRequired) {
		t.Fatalf("signed locations without trusted keys: %v", err)
	}
}
