package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/diskspace"
	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/internal/machine"
	"github.com/flowkeep/flowkeep/recovery"
)

// Options configure a restore.
type Options struct {
	Plan PlanOptions
	// Partitions restores only these partition indexes (nil: all), for
	// laying a cluster's partitions onto several machines.
	Partitions []int
	// Force replaces partitions already in the directory; the old files are
	// kept beside them as *.replaced-TIMESTAMP, never deleted.
	Force bool
	// DryRun plans and reports without writing anything.
	DryRun bool
	// Workers is how many objects of one partition download at once
	// (default 8); Parallel how many partitions restore at once
	// (backup.DefaultParallel).
	Workers  int
	Parallel int
	// Memory bounds the chunk data in memory at once, all partitions
	// together (default backup.DefaultMemory bytes).
	Memory   int64
	Progress Progress
	// Note receives what the restore decided on the way (fallbacks).
	Note func(string)
	Now  func() time.Time
	// Mode is the permission of the restored partition files (default
	// 0o644). UID and GID, if not -1, make them (and a directory the
	// restore creates) owned by that user and group, so a restore run as
	// root leaves files the flowrun service user can write. The zero
	// Options leave ownership alone.
	Mode     os.FileMode
	UID, GID int
	chown    bool
	// Keys open encrypted backups (backup.NewOpener of the identities).
	Keys *backup.Cipher
	// TempDir is where a restore does its SQLite work when other users
	// can change what names in the target directory lead to (a restore as
	// root into the service user's directory): in a private scratch
	// directory made there, which needs room for the images, before it
	// copies each finished file in. Default os.TempDir(). A TempDir other
	// users can change is refused (ErrUnsafeTempDir).
	TempDir string
}

// WithOwner sets the owner of restored files (-1 keeps one unchanged).
func (o Options) WithOwner(uid, gid int) Options {
	o.UID, o.GID, o.chown = uid, gid, uid >= 0 || gid >= 0
	return o
}

// Result says what was restored.
type Result struct {
	Plan      *Plan
	Restored  []int
	Fallbacks []string
	// Bytes were laid down (partition images, uncompressed); Downloaded
	// were fetched from the store (compressed, fallbacks included).
	Bytes      int64
	Downloaded int64
	// Lineage is the new history the restored partitions start (pending
	// until flowrun's first run adopts it): a child of Plan.Lineage forked
	// at Plan.Epoch.
	Lineage recovery.Lineage
	// ReadFrom is the stored bytes of chunks read from each location, by
	// its name (RestoreFrom: see sources).
	ReadFrom map[string]int64
}

// Restore lays the partitions of the latest (or chosen) overlapping epoch
// into dir and trims them to that epoch, so the next run resumes exactly
// there. Every object is verified while it downloads; a corrupt or missing
// backup makes the restore fall back to the next best overlap, and says so.
// Files appear under their partition names only when every partition of
// the restore is complete: on any failure nothing half-restored is left.
// A plan for a time (PlanOptions.At) is settled from the fetched images
// before anything is trimmed (see settleAt).
func Restore(ctx context.Context, s backup.Store, dir string, o Options) (*Result, error) {
	return RestoreFrom(ctx, []backup.Store{s}, dir, o)
}

// RestoreFrom is Restore over the backups of several locations that hold
// copies of them (see sources): a location that cannot be read is skipped
// while another one serves, and each chunk is read from a location that
// holds it whole before the restore falls back to an older backup.
func RestoreFrom(ctx context.Context, stores []backup.Store, dir string, o Options) (*Result, error) {
	o = o.withDefaults()
	src, res, err := planRestore(ctx, stores, &o)
	if err != nil || o.DryRun {
		return res, err
	}
	t, err := prepareDir(ctx, dir, o)
	if err != nil {
		return nil, err
	}
	defer t.close() // and with it everything left in the work directory

	fetched := map[string]string{} // manifest id -> image in t.sqlite()
	for {
		if err := fetchWithFallback(ctx, src, t, o, res, fetched); err != nil {
			return nil, err
		}
		again, err := settleAt(ctx, t.sqlite(), fetched, &o, res, src.manifests)
		if err != nil {
			return nil, err
		}
		if !again {
			break
		}
	}
	res.ReadFrom = src.readFrom()
	if testHookFetched != nil {
		testHookFetched(t.work.path)
	}
	files, err := finish(ctx, t, fetched, o, res)
	if err != nil {
		return nil, err
	}
	var aside []string
	if o.Force {
		if aside, err = partitionFiles(ctx, t, res.Restored); err != nil {
			return nil, err
		}
	}
	if err := t.publish(files, aside, ".replaced-"+o.Now().UTC().Format("20060102T150405")); err != nil {
		return nil, err
	}
	return res, nil
}

// withDefaults fills in o's defaults, on a copy that shares nothing a
// restore writes to with the caller's (the plan's exclusions grow as
// backups turn out unusable).
func (o Options) withDefaults() Options {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Note == nil {
		o.Note = func(string) {}
	}
	o.Plan.Exclude = maps.Clone(o.Plan.Exclude)
	if o.Plan.Exclude == nil {
		o.Plan.Exclude = map[string]bool{}
	}
	if o.Mode == 0 {
		o.Mode = 0o644
	}
	if o.Memory <= 0 {
		o.Memory = backup.DefaultMemory
	}
	return o
}

// planRestore reads the locations' catalogs and plans the restore: which
// backup of each partition lays down which epoch of which history. It
// notes the locations it skipped and the manifests it could not read, and
// refuses a plan whose backups it holds no key for. What the plan needs
// again (the registry, a subset's settling) stays in o.Plan.
func planRestore(ctx context.Context, stores []backup.Store, o *Options) (*sources, *Result, error) {
	src, err := loadSources(ctx, stores, backup.ReadPolicy{Keys: o.Keys, Trusted: o.Plan.Trusted, RequireTrust: true}, &o.Plan)
	if err != nil {
		return nil, nil, err
	}
	res := &Result{}
	res.note(src.takeNotes(), o.Note)
	plan, err := MakePlan(src.manifests, o.Plan)
	if err != nil {
		return nil, nil, err
	}
	parts, err := selectPartitions(o.Partitions, plan.Count)
	if err != nil {
		return nil, nil, err
	}
	if plan.At != nil && len(parts) < plan.Count {
		// One machine's share: every machine must settle on the same
		// epoch, from what they all read alike.
		o.Plan.settledOnly = true
		if plan, err = MakePlan(src.manifests, o.Plan); err != nil {
			return nil, nil, err
		}
	}
	// Manifests that could not be read are never passed over in silence:
	// the restore may be older than it would have been.
	for _, b := range src.broken {
		if b.Ref.FlowUID == plan.Flow.UID {
			res.note([]string{fmt.Sprintf("backup %s of partition %d is unusable (its manifest: %v): skipped", b.Ref.ID, b.Ref.Index, b.Err)}, o.Note)
		}
	}
	// Nor are manifests of the flow that are not believed (unsigned or
	// badly signed in a signed location, unauthenticated in an encrypted
	// one): a genuine backup someone altered is one of them.
	for _, l := range src.locs {
		for _, st := range l.cat.Strays {
			if m := st.Manifest; m != nil && m.Flow.UID == plan.Flow.UID {
				res.note([]string{fmt.Sprintf("backup %s of partition %d in %s is not believed (%s): skipped", m.ID, m.Partition.Index, l.store, st.Reason)}, o.Note)
			}
		}
	}
	if err := notePointedMissing(ctx, src, plan, parts, res, *o); err != nil {
		return nil, nil, err
	}
	if err := opened(plan, parts, o.Keys); err != nil {
		return nil, nil, err
	}
	res.Plan, res.Restored = plan, parts
	return src, res, nil
}

// notePointedMissing notes each restored partition whose latest pointer
// names a backup of which no manifest is stored at all (not even a damaged
// or disbelieved one): deleted, by someone who can delete in the bucket or
// by a mistake, so the restore is older than the newest backup was.
func notePointedMissing(ctx context.Context, src *sources, plan *Plan, parts []int, res *Result, o Options) error {
	known := map[string]bool{}
	for _, m := range src.manifests {
		known[m.ID] = true
	}
	for _, b := range src.broken {
		known[b.Ref.ID] = true
	}
	for _, l := range src.locs {
		for _, st := range l.cat.Strays {
			if st.Manifest != nil {
				known[st.Manifest.ID] = true
			}
		}
	}
	for _, idx := range parts {
		chosen := plan.Chosen[idx]
		if chosen == nil {
			continue // nothing restored for it: no pointer to compare with it, so none is read
		}
		for _, l := range src.locs {
			m, err := backup.ReadManifestWith(ctx, l.store, backup.LatestKey(plan.Flow.UID, idx), o.Keys)
			if err != nil {
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				continue // no pointer, a damaged one, one it cannot open: it says nothing here
			}
			if m.Flow.UID != plan.Flow.UID || m.Partition.Index != idx || known[m.ID] || m.ID <= chosen.ID {
				continue
			}
			res.note([]string{fmt.Sprintf("the latest pointer of partition %d in %s names backup %s (epochs %d..%d), whose manifest is not stored (deleted, or lost): restored from an older backup",
				idx, l.store, m.ID, m.Epochs.Lo, m.Epochs.Hi)}, o.Note)
		}
	}
	return nil
}

// note records what a restore decided on the way.
func (res *Result) note(notes []string, to func(string)) {
	for _, n := range notes {
		res.Fallbacks = append(res.Fallbacks, n)
		to(n)
	}
}

// fetchWithFallback downloads and checks every chosen backup into the
// directory SQLite works in (t.sqlite()). A backup that turns out unusable
// (corrupt, missing, too large for the disk) is excluded and the restore
// replanned without it, down to older backups or an older epoch, each
// step noted. It adds the image of each manifest in the final plan
// (res.Plan) to fetched, by manifest id.
func fetchWithFallback(ctx context.Context, src *sources, t *target, o Options, res *Result, fetched map[string]string) error {
	plan, parts, w := res.Plan, res.Restored, t.sqlite()
	budget := backup.NewBudget(o.Memory)
	for {
		var total int64
		for _, p := range parts {
			if _, ok := fetched[plan.Chosen[p].ID]; !ok {
				total += imageBytes(plan.Chosen[p])
			}
		}
		var done, downloaded atomic.Int64
		fo := FetchOptions{Workers: o.Workers, Parallel: o.Parallel, Downloaded: &downloaded, Memory: budget, flush: newFlusher()}
		if o.Progress != nil {
			fo.Progress = func(n, _ int64) { o.Progress(n, total) }
		}
		// A backup whose image alone cannot fit on the disk is passed over
		// with the reason (an older, smaller one may fit), not a hard stop.
		bad := tooLarge(t.rooms(), plan, parts, fetched)
		if bad == nil {
			var err error
			bad, err = fetchAll(ctx, src, w, plan, parts, fetched, fo, &done)
			res.Bytes += done.Load()
			res.Downloaded += downloaded.Load()
			res.note(src.takeNotes(), o.Note)
			if err != nil {
				return err
			}
		}
		if bad == nil {
			return nil
		}
		o.Plan.Exclude[bad.m.ID] = true
		next, perr := MakePlan(src.manifests, o.Plan)
		if perr != nil {
			return fmt.Errorf("backup %s of partition %d is unusable (%v), and without it: %w", bad.m.ID, bad.m.Partition.Index, bad.err, perr)
		}
		if err := opened(next, parts, o.Keys); err != nil {
			return fmt.Errorf("backup %s of partition %d is unusable (%v), and the next best backups: %w", bad.m.ID, bad.m.Partition.Index, bad.err, err)
		}
		note := fmt.Sprintf("backup %s of partition %d is unusable (%v): fell back from epoch %d to epoch %d", bad.m.ID, bad.m.Partition.Index, bad.err, plan.Epoch, next.Epoch)
		if next.Epoch == plan.Epoch {
			note = fmt.Sprintf("backup %s of partition %d is unusable (%v): used its older backup %s, which also restores epoch %d",
				bad.m.ID, bad.m.Partition.Index, bad.err, next.Chosen[bad.m.Partition.Index].ID, next.Epoch)
		}
		res.Fallbacks = append(res.Fallbacks, note)
		o.Note(note)
		plan = next
		res.Plan = plan
	}
}

// finish makes the fetched images the restored partitions, still in the
// work directory: each is trimmed to the plan's epoch and starts the new
// history (res.Lineage) where SQLite works (t.sqlite()), and is copied
// into the work directory if that is a scratch directory; each file gets
// its mode, owner and fsync, through its descriptor. It returns the files
// to publish, the chunk key among them for an encrypted restore.
func finish(ctx context.Context, t *target, fetched map[string]string, o Options, res *Result) ([]staged, error) {
	plan, parts, w := res.Plan, res.Restored, t.sqlite()
	res.Lineage = plan.Lineage.Lineage.Child(recovery.NewLineageID(), machine.Host(), recovery.Epoch(plan.Epoch), plan.Lineage.Runs, plan.Lineage.Progress, o.Now(), recovery.LineageRestore)
	staging := map[int]string{} // partition -> its file in t.work
	for _, p := range parts {
		name := fetched[plan.Chosen[p].ID]
		if t.scratch == nil {
			if err := trimAndMark(ctx, w.pathOf(name), w.pathOf(name), o, res); err != nil {
				return nil, fmt.Errorf("partition %d: %w", p, err)
			}
			staging[p] = name
			continue
		}
		// The partition records which file it is: the copy.
		as := t.work.newName("part-%d.sqlite3", p)
		f, err := t.copyIn(name, as, func(copyPath string) error {
			return trimAndMark(ctx, w.pathOf(name), copyPath, o, res)
		})
		if err == nil {
			err = sealFile(f, o.Mode, o)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return nil, fmt.Errorf("partition %d: %w", p, err)
		}
		staging[p] = as
	}
	if t.scratch == nil {
		// SQLite opened the images by name: the names must have led into
		// the work directory.
		if err := w.intact(); err != nil {
			return nil, err
		}
	}
	if testHookStaged != nil {
		testHookStaged()
	}
	var files []staged
	for _, p := range parts {
		name := staging[p]
		if t.scratch == nil {
			if err := w.seal(name, o.Mode, o); err != nil {
				return nil, fmt.Errorf("partition %d: %w", p, err)
			}
		}
		files = append(files, staged{name: name, final: fmt.Sprintf("part-%d.sqlite3", p), what: fmt.Sprintf("partition %d", p)})
	}
	// The next backup from dir continues the restored backups' chain; the
	// key belongs to whoever owns the partitions (the agent runs as them).
	if key := backup.ChunkKeyContents(plan.Chosen[parts[0]]); key != nil {
		name, err := t.work.writeFile("chunk-key", key, 0o600, o)
		if err != nil {
			return nil, fmt.Errorf("store the chunk key: %w", err)
		}
		files = append(files, staged{name: name, final: backup.ChunkKeyFile, what: "the chunk key"})
	}
	return files, nil
}

// trimAndMark trims the image at path to the plan's epoch and gives it the
// restore's new lineage, recording the file at as (path, or where the
// image is copied to) as the partition's file; where the manifests did
// not say when the epoch closed, it takes that from the image.
func trimAndMark(ctx context.Context, path, as string, o Options, res *Result) error {
	plan := res.Plan
	// The image is the restore's own until it is renamed, and synced
	// before: a trim that fails part-way fails the restore, which removes
	// it. So it is trimmed without a journal or syncs of its own (in WAL
	// mode with full syncs, four 200 MiB partitions took 0.2 s, one after
	// the other).
	db, err := recovery.OpenScratchDB(path)
	if err != nil {
		return err
	}
	err = recovery.Trim(ctx, db, recovery.Epoch(plan.Epoch), recovery.ExecutionNumber(plan.Execution), o.Now())
	if err == nil {
		err = recovery.MarkRestored(ctx, db, res.Lineage, as)
	}
	if err == nil && !plan.EpochTimeExact {
		// The image knows when the epoch closed; the manifests did not.
		var closed time.Time
		if closed, err = recovery.EpochTime(ctx, db, recovery.Epoch(plan.Epoch)); err == nil && !closed.IsZero() {
			plan.EpochTime, plan.EpochTimeExact = closed, true
		}
	}
	if err == nil {
		return recovery.CloseScratchDB(ctx, db)
	}
	db.Close()
	return err
}

// testHookFetched, if set, runs when every image is fetched and checked,
// before any is trimmed; it is given the path of the target's private
// directory.
var testHookFetched func(workPath string)

// testHookStaged, if set, runs when the images are trimmed and nothing is
// published yet.
var testHookStaged func()

// opened checks that every backup a restore would read is open: one that
// is encrypted and Locked needs an identity (backup.ErrIdentityRequired),
// or another one (backup.ErrWrongIdentity). A restore never falls back
// past a backup for want of its key: that would hide the reason.
func opened(plan *Plan, parts []int, keys *backup.Cipher) error {
	for _, p := range parts {
		m := plan.Chosen[p]
		if !m.Locked {
			continue
		}
		if !keys.CanOpen() {
			return backup.ErrIdentityRequired
		}
		return fmt.Errorf("%w: backup %s of partition %d is sealed to a recipient set none of them belongs to; give an identity of that set (--identity-file, repeatable)",
			backup.ErrWrongIdentity, m.ID, p)
	}
	return nil
}

// tooLarge returns a chosen backup not yet fetched whose image alone is
// larger than the free space where the restore writes it (each room: the
// target, and the scratch directory's file system if there is one).
func tooLarge(rooms []room, plan *Plan, parts []int, fetched map[string]string) *badBackup {
	for _, r := range rooms {
		free, ok := freeSpace(r.dir)
		if !ok {
			continue
		}
		for _, p := range parts {
			m := plan.Chosen[p]
			if _, done := fetched[m.ID]; done || uint64(r.n*imageBytes(m)) <= free {
				continue
			}
			needs := human.Bytes(imageBytes(m))
			if r.n > 1 {
				needs += fmt.Sprintf(" %d times there (the restore's scratch copy and the restored file)", r.n)
			}
			return &badBackup{m, fmt.Errorf("%w: its image needs %s, and %s has only %s free", ErrNoSpace, needs, r.dir, human.Bytes(int64(free)))}
		}
	}
	return nil
}

// freeSpace is diskspace.Free (a variable for tests).
var freeSpace = diskspace.Free

// ErrNoSpace says a backup's image does not fit on the restore's disk.
var ErrNoSpace = errors.New("not enough free disk space")

type badBackup struct {
	m   *backup.Manifest
	err error
}

// fetchAll downloads the chosen backups not yet fetched. A backup that turns
// out corrupt or incomplete is returned as bad (the caller re-plans); other
// errors (disk full, access) end the restore.
func fetchAll(ctx context.Context, src *sources, w *workDir, plan *Plan, parts []int, fetched map[string]string, fo FetchOptions, done *atomic.Int64) (*badBackup, error) {
	type job struct {
		p    int
		m    *backup.Manifest
		name string
		err  error
	}
	var jobs []*job
	for _, p := range parts {
		m := plan.Chosen[p]
		if _, ok := fetched[m.ID]; !ok {
			jobs = append(jobs, &job{p: p, m: m, name: w.newName("part-%d.sqlite3", p)})
		}
	}
	// Partitions download side by side, each with its own workers.
	var g errgroup.Group
	par := fo.Parallel
	if par <= 0 {
		par = backup.DefaultParallel
	}
	g.SetLimit(par)
	for _, j := range jobs {
		g.Go(func() error {
			jo := fo
			jo.Get = src.getter(j.m)
			j.err = fetchImage(ctx, src.store(j.m), j.m, w, j.name, jo, done)
			if j.err == nil {
				if j.err = checkImage(ctx, w.pathOf(j.name), j.m); j.err != nil {
					w.removeDB(j.name)
				}
			}
			return nil
		})
	}
	g.Wait()
	var bad *badBackup
	var hard error
	for _, j := range jobs {
		switch {
		case j.err == nil:
			fetched[j.m.ID] = j.name
		case errors.Is(j.err, backup.ErrCorrupt) || errors.Is(j.err, backup.ErrNotFound):
			if bad == nil {
				bad = &badBackup{j.m, j.err}
			}
		case hard == nil:
			hard = fmt.Errorf("restore partition %d from backup %s: %w", j.p, j.m.ID, j.err)
		}
	}
	if hard != nil {
		return nil, hard
	}
	return bad, nil
}

// checkImage makes sure the image is the partition its manifest names, and
// can be resumed at every epoch of the range the manifest claims: a
// manifest is only believed where the image agrees.
func checkImage(ctx context.Context, path string, m *backup.Manifest) error {
	p, err := recovery.OpenPartition(ctx, path, true)
	if err != nil {
		return imageError(path, "open the image", err)
	}
	if p == nil {
		return fmt.Errorf("%w: the image is not a recovery partition", backup.ErrCorrupt)
	}
	defer p.Close()
	if p.FlowUID != m.Flow.UID || int(p.Index) != m.Partition.Index || int(p.Count) != m.Partition.Count {
		return fmt.Errorf("%w: the image is partition %d/%d of flow %s, the manifest says %d/%d of %s",
			backup.ErrCorrupt, p.Index, p.Count, p.FlowUID, m.Partition.Index, m.Partition.Count, m.Flow.UID)
	}
	v, err := recovery.ReadView(ctx, p.DB)
	if err != nil {
		return imageError(path, "read the image", err)
	}
	if uint64(v.Lo()) != m.Epochs.Lo || uint64(v.Hi()) != m.Epochs.Hi {
		return fmt.Errorf("%w: the image restores epochs %d..%d, the manifest claims %d..%d",
			backup.ErrCorrupt, v.Lo(), v.Hi(), m.Epochs.Lo, m.Epochs.Hi)
	}
	return nil
}

// imageError labels an error reading a fetched image: a fault of the local
// disk (a full one above all: SQLite then reports a failed shared-memory
// resize, not ENOSPC) ends the restore with what to fix; anything else
// makes the backup corrupt, and the restore falls back.
func imageError(path, what string, err error) error {
	if !recovery.LocalIOError(err) {
		return fmt.Errorf("%w: %s: %v", backup.ErrCorrupt, what, err)
	}
	if free, ok := diskspace.Free(filepath.Dir(path)); ok && free < 1<<20 {
		return fmt.Errorf("%s %s: %w (%v)", what, path, syscall.ENOSPC, err)
	}
	return fmt.Errorf("%s %s: %w", what, path, err)
}

func imageBytes(m *backup.Manifest) int64 {
	n := m.Base.Size
	if m.Delta != nil {
		n += m.Delta.Size
	}
	return n
}

// removeDB removes a scratch database at path and the files SQLite keeps
// beside it (verify's, in its own temporary directory).
func removeDB(path string) {
	os.Remove(path)
	removeBeside(path)
}

// removeBeside removes the files SQLite keeps beside the database at path.
func removeBeside(path string) {
	for _, suf := range []string{"-wal", "-shm", "-journal"} {
		os.Remove(path + suf)
	}
}

// SelectPartitions parses a partition subset against the flow's count.
func selectPartitions(want []int, count int) ([]int, error) {
	if want == nil {
		out := make([]int, count)
		for i := range out {
			out[i] = i
		}
		return out, nil
	}
	seen := map[int]bool{}
	var out []int
	for _, p := range want {
		if p < 0 || p >= count {
			return nil, fmt.Errorf("%w: partition %d does not exist: the flow has partitions 0..%d", ErrNoSuchPartition, p, count-1)
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Ints(out)
	return out, nil
}

// PartitionsForProcess returns the partitions process id of n restores:
// every index i with i mod n == id.
func PartitionsForProcess(id, n, count int) []int {
	out := []int{}
	for i := 0; i < count; i++ {
		if i%n == id {
			out = append(out, i)
		}
	}
	return out
}

// prepareDir creates dir if needed (durably, and owned as asked), opens it
// (resolving a symlink once), takes the directory's restore lock, removes
// what killed restores left there, refuses a directory that holds
// partitions (or files named like them) unless force, and makes the
// restore's private work directory in it, and a scratch directory for
// SQLite under o.TempDir if other users can change what that one's path
// leads to (see guard). Closing the target releases the lock and removes
// both.
func prepareDir(ctx context.Context, dir string, o Options) (*target, error) {
	_, statErr := os.Lstat(dir)
	// Made one name at a time, never through a symlink another user could
	// have placed (see walkDir).
	made, _, err := walkDir(dir, true)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	made.Close()
	t, err := openTarget(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			t.close()
		}
	}()
	if os.IsNotExist(statErr) {
		if err := giveAway(t.dir, o); err != nil {
			return nil, err
		}
	}
	if err := lockOpenDir(t.dir, dir); err != nil {
		return nil, err
	}
	if err := sweepRestoreTemps(t); err != nil {
		return nil, err
	}
	taken, err := occupied(ctx, t)
	if err != nil {
		return nil, err
	}
	if len(taken) > 0 && !o.Force {
		return nil, fmt.Errorf("%w: %s already holds recovery partitions (%s): restore into an empty directory, or pass --force to replace them (the old files are kept as *.replaced-TIME)",
			ErrOccupied, dir, strings.Join(taken, ", "))
	}
	if t.work, err = makeWorkDir(t); err != nil {
		return nil, err
	}
	unsafe, err := t.guard(o.TempDir)
	if err != nil {
		return nil, err
	}
	if unsafe != nil {
		o.Note(fmt.Sprintf("other users can change what names in %s lead to (%v): the restore works on the images in %s, which needs room for them, and copies them in", dir, unsafe, t.scratch.path))
	}
	ok = true
	return t, nil
}

// ErrNoSuchPartition says a restore was asked for a partition the flow
// does not have.
var ErrNoSuchPartition = errors.New("no such partition")

// ErrOccupied says the target directory holds partitions already.
var ErrOccupied = errors.New("restore target is not empty")

// restoreTempRE names what restores wrote in the target directory itself
// before they wrote in a private directory (workDirRE): the fetched image
// (.part-N.ID.restoring, its -wal, -shm, -journal), its .restore-tmp while
// it was assembled and the delta beside it.
var restoreTempRE = regexp.MustCompile(`^\.part-\d+\..+\.restoring(\.restore-tmp)?(\.delta|-wal|-shm|-journal)?$`)

// sweepRestoreTemps removes what killed restores left in the target: their
// private directories and temporary files, and symlinks at those names
// (removed, never followed). The caller holds the directory's restore
// lock, so none of them is a live restore's.
func sweepRestoreTemps(t *target) error {
	ents, err := fs.ReadDir(t.root.FS(), ".")
	if err != nil {
		return err
	}
	for _, e := range ents {
		n, typ := e.Name(), e.Type()
		switch {
		case workDirRE.MatchString(n):
			// A killed publish is rolled back first. os.Root removes a
			// symlink itself, and never follows one inside the directory.
			if err = rollBackPublish(t, n); err == nil {
				err = t.root.RemoveAll(n)
			}
		case restoreTempRE.MatchString(n) && (typ.IsRegular() || typ&fs.ModeSymlink != 0):
			err = t.root.Remove(n)
		default:
			continue
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove a killed restore's %s: %w", filepath.Join(t.path, n), err)
		}
	}
	return nil
}

// occupied lists the files in the target a restore would collide with.
func occupied(ctx context.Context, t *target) ([]string, error) {
	ents, err := fs.ReadDir(t.root.FS(), ".")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "part-") && (strings.HasSuffix(n, ".sqlite3") || strings.HasSuffix(n, "-wal") || strings.HasSuffix(n, "-shm")) {
			out = append(out, n)
		}
	}
	// Partitions are found by content: also those under other names.
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "part-") || !strings.HasSuffix(n, ".sqlite3") || !e.Type().IsRegular() {
			continue
		}
		p, err := recovery.OpenPartition(ctx, filepath.Join(t.path, n), true)
		if err != nil || p == nil {
			continue // not a partition (or unreadable): not ours to touch
		}
		p.Close()
		out = append(out, n)
	}
	return out, nil
}

// partitionFiles lists what --force moves aside for a restore of parts:
// the files of those partitions (found by content), and whatever holds the
// names it publishes (part-N.sqlite3), each with its -wal and -shm. Other
// partitions in the target are left alone.
func partitionFiles(ctx context.Context, t *target, parts []int) ([]string, error) {
	taken, err := occupied(ctx, t)
	if err != nil {
		return nil, err
	}
	restoring := map[int]bool{}
	names := map[string]bool{}
	for _, p := range parts {
		restoring[p] = true
		names[fmt.Sprintf("part-%d.sqlite3", p)] = true
	}
	mine := func(n string) bool {
		main := strings.TrimSuffix(strings.TrimSuffix(n, "-wal"), "-shm")
		if names[main] {
			return true
		}
		p, err := recovery.OpenPartition(ctx, filepath.Join(t.path, main), true)
		if err != nil || p == nil {
			return false // not a partition, or unreadable: not ours to touch
		}
		defer p.Close()
		return restoring[int(p.Index)]
	}
	var out []string
	seen := map[string]bool{}
	for _, n := range taken {
		if !mine(n) {
			continue
		}
		for _, s := range []string{"", "-wal", "-shm"} {
			if s != "" && (strings.HasSuffix(n, "-wal") || strings.HasSuffix(n, "-shm")) {
				continue
			}
			if seen[n+s] {
				continue
			}
			if _, err := t.root.Lstat(n + s); err == nil {
				seen[n+s] = true
				out = append(out, n+s)
			}
		}
	}
	return out, nil
}
