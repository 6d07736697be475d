package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

// forge rewrites a stored manifest (and re-seals it), as a buggy or hostile
// writer could.
func forge(t *testing.T, s *memstore.Store, m *backup.Manifest, change func(*backup.Manifest)) {
	t.Helper()
	c := *m
	change(&c)
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), backup.ManifestKey(c.Flow.UID, c.Partition.Index, c.ID), b); err != nil {
		t.Fatal(err)
	}
}

// A manifest that claims a wider range than its image holds must not be
// believed: deep verify compares them, and restore falls back to an older
// overlap instead of failing with an empty directory.
func TestRestore_ManifestRangeTheImageDoesNotHoldFallsBack(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(30)
	f.backupAll()
	f.epoch(30)
	newest := f.backupAll()
	forge(t, s, newest[1], func(m *backup.Manifest) { m.Epochs.Hi += 5 })
	rep, err := Verify(ctx, s, VerifyOptions{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusDegraded || !strings.Contains(fmt.Sprint(rep.Problems), "the manifest claims") {
		t.Fatalf("deep verify: %s %+v", rep.Status, rep.Problems)
	}
	dst := filepath.Join(t.TempDir(), "r")
	// The caller's options are the caller's: the backup found unusable is
	// the restore's own exclusion, not written into them.
	opts := Options{Plan: PlanOptions{Exclude: map[string]bool{}}}
	res, err := Restore(ctx, s, dst, opts)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if len(res.Fallbacks) != 1 || !strings.Contains(res.Fallbacks[0], "the manifest claims") {
		t.Fatalf("fallbacks %v", res.Fallbacks)
	}
	if len(opts.Plan.Exclude) != 0 {
		t.Fatalf("restore wrote into its caller's exclusions: %v", opts.Plan.Exclude)
	}
	if e, got := loadDir(t, dst); uint64(e) != res.Plan.Epoch || len(got) != 30 {
		t.Fatalf("resumed at %d with %d keys, plan said %d", e, len(got), res.Plan.Epoch)
	}
}

// A stray manifest claiming another partition count does not decide the
// flow's shape: the count most backups agree on does, and verify reports
// the stray.
func TestPlan_StrayPartitionCountIsOutvotedAndReported(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 3, s)
	f.epoch(20)
	ms := f.backupAll()
	forge(t, s, ms[0], func(m *backup.Manifest) {
		m.ID = "20991231T000000.000Z-0badc0de"
		m.Partition = backup.PartitionRef{Index: 4, Count: 7}
	})
	plan, err := PlanFrom(ctx, s, PlanOptions{})
	if err != nil || plan.Count != 3 {
		t.Fatalf("plan %+v, %v", plan, err)
	}
	rep, err := Verify(ctx, s, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusDegraded || !strings.Contains(fmt.Sprint(rep.Problems), "claims 7 partitions") {
		t.Fatalf("verify: %s %+v", rep.Status, rep.Problems)
	}
}

// A second flow's lone stray manifest makes verify report a problem (exit
// 1), not "not restorable" (exit 2) while the real flow restores.
func TestVerify_AStrayFlowIsAProblemNotALoss(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 3, s)
	f.epoch(20)
	f.backupAll()
	g := newFlow(t, 2, s)
	g.epoch(3)
	g.backupPart(0) // partition 1 of g is never backed up
	rep, err := Verify(context.Background(), s, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusDegraded {
		t.Fatalf("status %s, problems %+v", rep.Status, rep.Problems)
	}
}

// A damaged latest pointer is a problem; a missing or stale one (a backup
// killed between its manifest and its pointer, which the next backup heals)
// is a note that leaves the flow healthy.
func TestVerify_ChecksLatestPointers(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		damage func(s *memstore.Store, f *flow, ms []*backup.Manifest)
		status string
		want   string
	}{
		{"missing", func(s *memstore.Store, _ *flow, ms []*backup.Manifest) {
			s.Delete(ctx, backup.LatestKey(ms[1].Flow.UID, 1))
		}, StatusHealthy, "has no latest pointer"},
		{"stale", func(s *memstore.Store, _ *flow, ms []*backup.Manifest) {
			b, _ := ms[0].Marshal()
			s.Put(ctx, backup.LatestKey(ms[0].Flow.UID, 0), b)
		}, StatusHealthy, "is newer"},
		{"damaged", func(s *memstore.Store, _ *flow, ms []*backup.Manifest) {
			s.Mutate(backup.LatestKey(ms[0].Flow.UID, 0), func(b []byte) []byte { return b[:len(b)/2] })
		}, StatusDegraded, "damaged latest pointer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := memstore.New()
			f := newFlow(t, 2, s)
			f.epoch(10)
			first := f.backupAll()
			f.epoch(10)
			f.backupAll()
			tc.damage(s, f, first)
			rep, err := Verify(ctx, s, VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status != tc.status || !strings.Contains(fmt.Sprint(rep.Problems, rep.Notes), tc.want) {
				t.Fatalf("%s problems %+v notes %+v", rep.Status, rep.Problems, rep.Notes)
			}
		})
	}
}

// A fallback that keeps the epoch says which older backup it used, not
// "fell back from epoch 3 to epoch 3".
func TestRestore_FallbackAtTheSameEpochSaysWhatItUsed(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(10)
	older := f.backupAll()
	time.Sleep(2 * time.Millisecond) // backup ids order by millisecond
	newer := f.backupAll()           // same range, nothing changed
	target := newer[0].Objects()[len(newer[0].Objects())-1]
	if target.SHA256 == older[0].Objects()[len(older[0].Objects())-1].SHA256 {
		t.Skip("both backups share every chunk")
	}
	s.Mutate(backup.ChunkKey(target.SHA256), func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
	res, err := Restore(context.Background(), s, filepath.Join(t.TempDir(), "r"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Fallbacks) != 1 || strings.Contains(res.Fallbacks[0], "from epoch 2 to epoch 2") || !strings.Contains(res.Fallbacks[0], older[0].ID) {
		t.Fatalf("fallbacks %v", res.Fallbacks)
	}
}

// Restored files get the mode asked for; a killed restore's temporary files
// are swept by the next restore into the same directory.
func TestRestore_ModeAndLeftoverTemporaryFiles(t *testing.T) {
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(10)
	f.backupAll()
	dst := t.TempDir()
	left := []string{".part-0.20261201T000000.000Z-00000000.restoring", ".part-0.20261201T000000.000Z-00000000.restoring.restore-tmp",
		".part-0.20261201T000000.000Z-00000000.restoring.restore-tmp.delta", ".part-3.x.restoring-wal"}
	for _, n := range left {
		os.WriteFile(filepath.Join(dst, n), []byte("junk"), 0o644)
	}
	os.WriteFile(filepath.Join(dst, "notes.txt"), []byte("mine"), 0o644)
	o := Options{Mode: 0o600}.WithOwner(os.Getuid(), os.Getgid())
	if _, err := Restore(context.Background(), s, dst, o); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dst, "part-0.sqlite3"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("restored file: %v, %v", st, err)
	}
	for _, n := range left {
		if _, err := os.Stat(filepath.Join(dst, n)); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", n, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "notes.txt")); err != nil {
		t.Fatal("restore removed a file that was not its own")
	}
}

// Two restores into one directory do not race: the second is refused.
func TestRestore_SecondRestoreIntoTheSameDirectoryIsRefused(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(3)
	f.backupAll()
	if _, err := Restore(context.Background(), s, dir, Options{}); err == nil || !strings.Contains(err.Error(), "another restore") {
		t.Fatalf("err = %v", err)
	}
}

// A restore checks each chunk's stored bytes against their recorded
// sha256 (half the bytes to hash): damaged stored bytes are caught, and a
// chunk whose stored bytes differ from the record but whose content is
// right (stored again, compressed another way) is still accepted, as its
// content's sha256 decides.
func TestFetchObject_StoredSHA256PinsTheContent(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	content := []byte(strings.Repeat("flowkeep state ", 5000))
	z := backup.Compress(nil, content)
	ob := backup.Object{SHA256: backup.SumHex(content), Size: int64(len(content)), Stored: int64(len(z)), StoredSHA256: backup.SumHex(z)}
	if err := s.Put(ctx, backup.ChunkKey(ob.SHA256), z); err != nil {
		t.Fatal(err)
	}
	if b, err := FetchObject(ctx, s, ob); err != nil || string(b) != string(content) {
		t.Fatalf("intact chunk: %v", err)
	}
	other := ob
	other.StoredSHA256 = backup.SumHex([]byte("another encoding"))
	if b, err := FetchObject(ctx, s, other); err != nil || string(b) != string(content) {
		t.Fatalf("chunk stored another way, content right: %v", err)
	}
	damaged := append([]byte(nil), z...)
	damaged[len(damaged)/2] ^= 0x40
	s.Put(ctx, backup.ChunkKey(ob.SHA256), damaged)
	if _, err := FetchObject(ctx, s, ob); !errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("damaged stored bytes: %v, want ErrCorrupt", err)
	}
}

type sqliteCoded int

func (c sqliteCoded) Error() string { return fmt.Sprintf("sqlite error (%d)", int(c)) }
func (c sqliteCoded) Code() int     { return int(c) }

// A fetched image that cannot be opened because of the local disk (a full
// one makes SQLite fail to size its shared memory, SQLITE_IOERR_SHMSIZE)
// ends the restore with the disk's fault; only what is wrong with the
// image itself makes the backup corrupt (and the restore fall back).
func TestImageError_TheDiskIsNotTheBackup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	for _, c := range []struct {
		err     error
		corrupt bool
	}{
		{sqliteCoded(4874), false}, // SQLITE_IOERR_SHMSIZE
		{sqliteCoded(13), false},   // SQLITE_FULL
		{fmt.Errorf("write: %w", syscall.ENOSPC), false},
		{sqliteCoded(11), true}, // SQLITE_CORRUPT
		{sqliteCoded(26), true}, // SQLITE_NOTADB
		{errors.New("no such table: parts"), true},
	} {
		err := imageError(path, "open the image", c.err)
		if errors.Is(err, backup.ErrCorrupt) != c.corrupt {
			t.Errorf("%v: %v (corrupt %v, want %v)", c.err, err, errors.Is(err, backup.ErrCorrupt), c.corrupt)
		}
	}
}

// A damaged (here: emptied) newest manifest is never skipped in silence:
// restore says it fell back, and verify counts it unhealthy and names it
// as the newest backup, not "a backup stopped" naming the older one.
func TestRestoreAndVerify_ADamagedNewestManifestIsReported(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(30)
	f.backupAll()
	f.epoch(30)
	newest := f.backupAll()[0]
	if err := s.Put(ctx, backup.ManifestKey(newest.Flow.UID, 0, newest.ID), nil); err != nil {
		t.Fatal(err)
	}
	res, err := Restore(ctx, s, filepath.Join(t.TempDir(), "r"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Fallbacks) != 1 || !strings.Contains(res.Fallbacks[0], newest.ID) || !strings.Contains(res.Fallbacks[0], "skipped") {
		t.Fatalf("fallbacks %q", res.Fallbacks)
	}
	rep, err := Verify(ctx, s, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fr := rep.Flows[0]
	if fr.Backups != 2 || fr.Healthy != 1 || rep.Status != StatusDegraded {
		t.Fatalf("verify counts %d of %d healthy (%s)", fr.Healthy, fr.Backups, rep.Status)
	}
	msgs := fmt.Sprint(rep.Problems, rep.Notes)
	if !strings.Contains(msgs, "the newest backup, "+newest.ID+", has a damaged manifest") || strings.Contains(msgs, "a backup stopped") {
		t.Fatalf("verify's diagnosis: %s", msgs)
	}
}

// A backup whose image is larger than the free disk is passed over with
// the reason, and the restore falls back to one that fits.
func TestRestore_AnImageLargerThanTheFreeDiskIsSkippedWithAReason(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(10)
	small := f.backupAll()[0]
	f.epochOf(3000, func(i int) (string, string) { return fmt.Sprint("big", i), strings.Repeat("x", 200) })
	big := f.backupAll()[0]
	limit := uint64(small.Base.Size + 4096)
	if uint64(big.Base.Size) <= limit {
		t.Fatalf("the big backup (%d bytes) is not bigger than the limit %d", big.Base.Size, limit)
	}
	defer func(old func(string) (uint64, bool)) { freeSpace = old }(freeSpace)
	freeSpace = func(string) (uint64, bool) { return limit, true }
	res, err := Restore(ctx, s, filepath.Join(t.TempDir(), "r"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Plan.Chosen[0].ID != small.ID || len(res.Fallbacks) != 1 || !strings.Contains(res.Fallbacks[0], "not enough free disk space") {
		t.Fatalf("restored %s, fallbacks %q", res.Plan.Chosen[0].ID, res.Fallbacks)
	}
}
