package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// countingGets counts the reads of each chunk.
type countingGets struct {
	*memstore.Store
	mu   sync.Mutex
	gets map[string]int
}

func (c *countingGets) Get(ctx context.Context, k string) (io.ReadCloser, error) {
	if strings.Contains(k, "chunks/") {
		c.mu.Lock()
		c.gets[k]++
		c.mu.Unlock()
	}
	return c.Store.Get(ctx, k)
}

func (c *countingGets) reads() (objects, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.gets {
		objects++
		total += n
	}
	return objects, total
}

// manyBackups makes a 2-partition flow with one base and several deltas per
// partition (the base shared by all of them).
func manyBackups(t *testing.T, s *memstore.Store, n int) *flow {
	t.Helper()
	f := newFlow(t, 2, s)
	f.epoch(3000)
	for i := 0; i < n; i++ {
		time.Sleep(2 * time.Millisecond)
		f.backupAll()
		f.epoch(50)
	}
	return f
}

// Deep verify reads every object once, however many backups name it: six
// backups of a partition sharing one base read the base once (the old deep
// verify read it six times), and it says what it read.
func TestDeepVerify_ReadsEachObjectOnce(t *testing.T) {
	s := memstore.New()
	manyBackups(t, s, 6)
	cs := &countingGets{Store: s, gets: map[string]int{}}
	rep, err := Verify(context.Background(), cs, VerifyOptions{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusHealthy || rep.Checked != 12 {
		t.Fatalf("%s, %d backups checked: %+v", rep.Status, rep.Checked, rep.Problems)
	}
	objects, total := cs.reads()
	if objects != total || objects != rep.ObjectsRead || rep.BytesRead != rep.BytesStored {
		t.Fatalf("read %d objects %d times (report: %d objects, %d of %d bytes)", objects, total, rep.ObjectsRead, rep.BytesRead, rep.BytesStored)
	}
}

// A damaged delta makes only its backup a problem; a damaged base makes
// every backup over it one. The chunk is quarantined either way.
func TestDeepVerify_DamageIsChargedToTheBackupsThatUseIt(t *testing.T) {
	for _, tc := range []struct {
		name       string
		pick       func(ms []*backup.Manifest) (backup.Object, int)
		wantProbs  int
		wantStatus string
	}{
		{"delta", func(ms []*backup.Manifest) (backup.Object, int) {
			for _, m := range ms {
				if m.Delta != nil && m.Partition.Index == 0 {
					return m.Delta.Chunks[0], 1
				}
			}
			return backup.Object{}, 0
		}, 1, StatusDegraded},
		{"base", func(ms []*backup.Manifest) (backup.Object, int) {
			for _, m := range ms {
				if m.Partition.Index == 0 {
					return m.Base.Chunks[0], 4
				}
			}
			return backup.Object{}, 0
		}, 4, StatusNotRestorable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := memstore.New()
			manyBackups(t, s, 4)
			cat, _ := backup.LoadCatalog(ctx, s, 0)
			ob, _ := tc.pick(cat.Manifests)
			s.Mutate(backup.ChunkKey(ob.SHA256), func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b })
			// Verify is read-only unless asked to quarantine.
			if _, err := Verify(ctx, s, VerifyOptions{Deep: true}); err != nil {
				t.Fatal(err)
			}
			if q, _ := backup.LoadQuarantine(ctx, s); len(q) != 0 {
				t.Fatalf("verify without --quarantine wrote markers: %v", q)
			}
			rep, err := Verify(ctx, s, VerifyOptions{Deep: true, Quarantine: true})
			if err != nil {
				t.Fatal(err)
			}
			var ofBackups []Problem
			for _, p := range rep.Problems {
				if p.Backup != "" {
					ofBackups = append(ofBackups, p)
				}
			}
			if len(ofBackups) != tc.wantProbs || rep.Status != tc.wantStatus {
				t.Fatalf("%s with %d backups' problems, want %s and %d: %+v", rep.Status, len(ofBackups), tc.wantStatus, tc.wantProbs, rep.Problems)
			}
			for _, p := range ofBackups {
				if *p.Partition != 0 || !strings.Contains(p.Message, ob.SHA256[:12]) {
					t.Fatalf("problem %+v does not name the damaged chunk of partition 0", p)
				}
			}
			q, err := backup.LoadQuarantine(ctx, s)
			if err != nil || !q[ob.SHA256] {
				t.Fatalf("the damaged chunk is not quarantined (%v)", err)
			}
		})
	}
}

// --newest checks only what the newest restore would use; --sample reads
// the asked share of the objects and still finds damage among them.
func TestDeepVerify_NewestAndSample(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	manyBackups(t, s, 4)
	rep, err := Verify(ctx, s, VerifyOptions{Deep: true, Newest: true})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := PlanFrom(ctx, s, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	seen := map[string]bool{}
	for _, m := range plan.Chosen {
		for _, ob := range m.Objects() {
			if !seen[ob.SHA256] {
				seen[ob.SHA256] = true
				want += ob.Stored
			}
		}
	}
	if rep.Status != StatusHealthy || rep.BytesRead != want || rep.Mode != "deep-newest" {
		t.Fatalf("--newest: %s, read %d bytes, want %d (the chosen backups')", rep.Status, rep.BytesRead, want)
	}
	all, _ := Verify(ctx, s, VerifyOptions{Deep: true})
	if all.BytesRead <= rep.BytesRead {
		t.Fatalf("a full deep verify read %d bytes, --newest %d", all.BytesRead, rep.BytesRead)
	}

	cs := &countingGets{Store: s, gets: map[string]int{}}
	half, err := Verify(ctx, cs, VerifyOptions{Deep: true, Sample: 50})
	if err != nil {
		t.Fatal(err)
	}
	unique := len(seenAll(ctx, t, s))
	if objects, _ := cs.reads(); objects != (unique+1)/2 || half.Sampled != objects || half.Status != StatusHealthy {
		t.Fatalf("--sample 50 read %d of %d objects (report: %d sampled, %s)", objects, unique, half.Sampled, half.Status)
	}
	// Damage every object: any sample finds it.
	for k := range seenAll(ctx, t, s) {
		s.Mutate(backup.ChunkKey(k), func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b })
	}
	some, err := Verify(ctx, s, VerifyOptions{Deep: true, Sample: 10})
	if err != nil {
		t.Fatal(err)
	}
	if some.Status == StatusHealthy || len(some.Problems) == 0 {
		t.Fatalf("--sample 10 over damaged objects: %s", some.Status)
	}
}

func seenAll(ctx context.Context, t *testing.T, s backup.Store) map[string]bool {
	t.Helper()
	cat, err := backup.LoadCatalog(ctx, s, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range cat.Manifests {
		for _, ob := range m.Objects() {
			out[ob.SHA256] = true
		}
	}
	return out
}

// integrity_check (read through a memory map) still finds a damaged page
// in an image whose header is intact.
func TestIntegrityCheck_FindsADamagedPage(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(20000)
	f.backupAll()
	dst := filepath.Join(t.TempDir(), "r")
	if _, err := Restore(context.Background(), s, dst, Options{}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dst, "part-0.sqlite3")
	if err := IntegrityCheck(context.Background(), path); err != nil {
		t.Fatalf("intact image: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 40*4096 {
		t.Fatalf("image of %d bytes is too small for the test", len(b))
	}
	for i := 20 * 4096; i < 20*4096+4096; i++ { // one page in the middle, garbled
		b[i] ^= 0x5a
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := IntegrityCheck(context.Background(), path); !errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("damaged image: %v, want ErrCorrupt", err)
	}
}

// A delta is laid over its base's image itself, not a copy, only where no
// other base names that image's frames: two bases of a partition that
// share most frames, each with a delta, verify healthy, and the shared
// frames are read from the store once (the newer base reads them from the
// older one's image, which its delta therefore must not have changed).
func TestDeepVerify_BasesThatShareFramesReadEachChunkOnce(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	big := func(i int) (string, string) { return fmt.Sprintf("k%06d", i), strings.Repeat("v", 200) }
	f.epochOf(60000, big) // about 15 MiB: several chunks
	back := func(o backup.Options) *backup.Manifest {
		time.Sleep(2 * time.Millisecond)
		r := backup.BackupPartition(ctx, s, f.st.Partitions()[0], o)
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return r.Manifest
	}
	base1 := back(backup.Options{})
	f.epoch(10)
	delta1 := back(backup.Options{})
	f.epoch(10)
	base2 := back(backup.Options{BaseMaxAge: time.Nanosecond})
	f.epoch(10)
	delta2 := back(backup.Options{})
	if base1.Delta != nil || delta1.Delta == nil || base2.Delta != nil || delta2.Delta == nil || base2.Base.ID == base1.Base.ID {
		t.Fatal("the backups are not two bases with a delta each")
	}
	frames := func(m *backup.Manifest) map[string]bool {
		out := map[string]bool{}
		for _, ob := range m.Base.Chunks {
			for _, f := range ob.FrameList() {
				out[f.SHA256] = true
			}
		}
		return out
	}
	shared := 0
	for f := range frames(base1) {
		if frames(base2)[f] {
			shared++
		}
	}
	if shared == 0 {
		t.Fatal("the two bases share no frame")
	}
	rep, err := Verify(ctx, s, VerifyOptions{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusHealthy || rep.Checked != 4 {
		t.Fatalf("%s, %d backups checked: %+v", rep.Status, rep.Checked, rep.Problems)
	}
	if rep.BytesRead != rep.BytesStored {
		t.Fatalf("read %d bytes of %d stored: the %d shared frames were read again", rep.BytesRead, rep.BytesStored, shared)
	}
}

// A deep check keeps on disk about the images it is checking, not every
// image it rebuilt: a rebuilt file goes (or is written over by the next)
// once its checks are done and nothing still to come reads from it. Eight
// partitions with a base and two deltas each (the first laid over a copy
// of the base), and room for two partitions at once: the scratch
// directory never holds more than those two partitions' base, copy and
// delta, and two spare files, where it used to hold all eight bases and
// their deltas.
func TestDeepVerify_ScratchHoldsTheImagesInFlight(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 8, s)
	f.epoch(8000)
	f.backupAll()
	var ms []*backup.Manifest
	for range 2 {
		f.epoch(100)
		time.Sleep(2 * time.Millisecond)
		ms = f.backupAll()
	}
	var base, partition int64
	for _, m := range ms {
		if m.Delta == nil {
			t.Fatal("the later backups are not deltas")
		}
		base = max(base, m.Base.Size)
		partition = max(partition, 2*m.Base.Size+m.Delta.Size)
	}
	defer func(was int64) { deepScratch = was }(deepScratch)
	deepScratch = 2 * partition
	tmp := t.TempDir()
	var mu sync.Mutex
	var peak int64
	var seen int
	names := map[string]bool{}
	progress := func(done, total int64) {
		var held int64
		filepath.WalkDir(tmp, func(p string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				if fi, err := e.Info(); err == nil {
					held += fi.Size()
				}
				mu.Lock()
				names[e.Name()] = true
				mu.Unlock()
			}
			return nil
		})
		mu.Lock()
		peak = max(peak, held)
		seen++
		mu.Unlock()
	}
	rep, err := Verify(ctx, s, VerifyOptions{Deep: true, TempDir: tmp, Progress: progress})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusHealthy || rep.Checked != 24 {
		t.Fatalf("%s, %d backups checked: %+v", rep.Status, rep.Checked, rep.Problems)
	}
	if len(names) < 24 || seen < 24 {
		t.Fatalf("saw %d files in %d looks: the check did not rebuild in %s", len(names), seen, tmp)
	}
	if limit := deepScratch + 2*base; peak > limit {
		t.Fatalf("the scratch directory held %d bytes at once, over %d: two partitions of %d bytes (base, copy, delta) and two spares of %d", peak, limit, partition, base)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Fatalf("the check left %d entries in %s", len(ents), tmp)
	}
}
