package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

// A deep check reads each object the checked backups name from the store
// once, whatever the number of backups naming it:
//
//   - every base is rebuilt once (its chunks verified, the image's sha256
//     checked, PRAGMA integrity_check run on it), and checked against the
//     manifest that took it;
//   - every delta is fetched once and laid over a copy of its base's image
//     (the base's last delta over the image itself, when no other base
//     names its chunks), which is then checked against the delta's
//     manifest (identity and restorable range);
//   - a chunk already read for another image is taken from that image on
//     local disk, not from the store again.
//
// Partitions are checked side by side (Parallel), within one memory budget.
// The temporary directory holds every base image until the check ends.

// deepScope is what a deep verify reads.
type deepScope struct {
	s        backup.Store
	o        VerifyOptions
	dir      string
	budget   *backup.Budget
	problem  func(*backup.Manifest, string)
	read     atomic.Int64 // stored bytes read from the store
	objects  atomic.Int64 // objects read from the store
	flaky    atomic.Int64 // objects that arrived damaged, then whole
	progress func(done, total int64)
	total    int64

	mu          sync.Mutex
	local       map[string]localChunk     // verified frames on local disk, by frameKey
	fetched     map[string]bool           // chunks read from the store (counted once)
	damaged     map[string]string         // chunk -> why it is unusable
	quarantined map[string]bool           // chunks quarantined by this check
	ciphers     map[string]*backup.Cipher // encrypted chunks: their manifest's Cipher (read-only once the check starts)
	// bases counts the bases (distinct chunk lists) naming each chunk
	// (read-only once the check starts).
	bases map[string]int
}

// frameKey names frame i of chunk h among the frames on local disk. A
// frame is reused only for the chunk it was read as: another chunk with a
// frame of the same content is still read from the store (deep verify
// reads every object).
func frameKey(h string, i int) string { return h + "/" + strconv.Itoa(i) }

// localChunk is a verified frame inside a local file.
type localChunk struct {
	path string
	off  int64
}

// deepCheck checks the backups in ms (minus those already bad) end to end,
// reading every unique object once; with o.Sample it only reads that
// percentage of the unique objects and checks each one's sha256.
func deepCheck(ctx context.Context, s backup.Store, ms []*backup.Manifest, bad map[string]bool, problem func(*backup.Manifest, string), o VerifyOptions, rep *Report) error {
	var todo, locked []*backup.Manifest
	for _, m := range ms {
		switch {
		case bad[m.ID]:
		case m.Locked:
			locked = append(locked, m)
		default:
			todo = append(todo, m)
		}
	}
	if len(locked) > 0 {
		if !o.Keys.CanOpen() {
			return backup.ErrIdentityRequired
		}
		if len(todo) == 0 {
			return fmt.Errorf("%w: none of the %d encrypted backups opens with them (sealed to recipient set %s)", backup.ErrWrongIdentity, len(locked), locked[0].Encryption.Recipients)
		}
		for _, m := range locked {
			problem(m, fmt.Sprintf("%v: sealed to recipient set %s, not checked", backup.ErrWrongIdentity, m.Encryption.Recipients))
		}
	}
	if o.Newest {
		todo = newestRestoreSet(todo)
	}
	mem := o.Memory
	if mem <= 0 {
		mem = backup.DefaultMemory
	}
	d := &deepScope{s: s, o: o, budget: backup.NewBudget(mem), problem: problem, progress: o.Progress,
		local: map[string]localChunk{}, fetched: map[string]bool{}, damaged: map[string]string{}, quarantined: map[string]bool{},
		ciphers: map[string]*backup.Cipher{}}
	unique := map[string]backup.Object{}
	for _, m := range todo {
		for _, ob := range m.Objects() {
			unique[ob.SHA256] = ob
			if c := m.Cipher(); c != nil {
				d.ciphers[ob.SHA256] = c
			}
		}
	}
	for _, ob := range unique {
		rep.BytesStored += ob.Stored
	}
	var err error
	if o.Sample > 0 && o.Sample < 100 {
		err = d.sample(ctx, todo, unique, rep)
	} else {
		d.total = rep.BytesStored
		err = d.rebuild(ctx, todo)
	}
	rep.ObjectsRead = int(d.objects.Load())
	rep.BytesRead = d.read.Load()
	if n := d.flaky.Load(); n > 0 {
		rep.Notes = append(rep.Notes, Problem{Message: fmt.Sprintf("%s arrived damaged and then whole when read again: the link (a proxy, a NIC) corrupts data in transit; the store's copies are whole", human.Count(n, "object"))})
	}
	return err
}

// newestRestoreSet keeps the backups the newest restore of each flow would
// use.
func newestRestoreSet(ms []*backup.Manifest) []*backup.Manifest {
	var out []*backup.Manifest
	for uid := range flowsOf(ms) {
		plan, err := MakePlan(ms, PlanOptions{FlowUID: uid})
		if err != nil {
			continue // verify reports why it is not restorable
		}
		out = append(out, plan.Chosen...)
	}
	return out
}

// sample reads a random Sample percent of the unique objects and checks
// each one's size and sha256 (no image is rebuilt).
func (d *deepScope) sample(ctx context.Context, todo []*backup.Manifest, unique map[string]backup.Object, rep *Report) error {
	keys := make([]string, 0, len(unique))
	for k := range unique {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	n := int(float64(len(keys))*d.o.Sample/100 + 0.999999)
	rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	keys = keys[:min(n, len(keys))]
	for _, k := range keys {
		d.total += unique[k].Stored
	}
	rep.Sampled = len(keys)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(d.o.Workers, 1))
	for _, k := range keys {
		ob := unique[k]
		// The chunk is read whole and checked a frame at a time.
		release, err := d.budget.Acquire(gctx, 2*ob.Stored+backup.FrameSize)
		if err != nil {
			break
		}
		g.Go(func() error {
			defer release()
			return d.classify(eachFrame(gctx, ob, d.get, func([]byte) {}))
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, m := range todo {
		for _, ob := range m.Objects() {
			if why, ok := d.damaged[ob.SHA256]; ok {
				d.problem(m, why)
				break
			}
		}
	}
	return nil
}

// classify turns a damaged or missing object into a finding (nil) and
// keeps other errors (access, disk).
func (d *deepScope) classify(err error) error {
	if err == nil || finding(err) {
		return nil
	}
	return err
}

// finding says whether err is about an object (damaged, missing, or
// unreadable through a corrupting link), not about the check itself.
func finding(err error) bool {
	return errors.Is(err, backup.ErrCorrupt) || errors.Is(err, backup.ErrNotFound) || errors.Is(err, ErrFlakyLink)
}

// get returns one frame's verified content: from a local image if it was
// read before, else from the store (read again before it is called
// damaged, and quarantined if it is).
func (d *deepScope) get(ctx context.Context, p *piece) ([]byte, error) {
	ob := p.chunk.ob
	d.mu.Lock()
	lc, ok := d.local[frameKey(ob.SHA256, p.frame)]
	why, bad := d.damaged[ob.SHA256]
	d.mu.Unlock()
	if bad {
		return nil, fmt.Errorf("%w: %s", backup.ErrCorrupt, why)
	}
	if ok {
		if b, err := readLocal(lc, p.f); err == nil {
			return b, nil
		}
	}
	// The content's sha256 is checked even where the stored bytes' is known.
	b, err := fetchFrame(ctx, d.s, p, frameCheck{cipher: d.ciphers[ob.SHA256], content: true, flaky: &d.flaky, onRead: d.counted})
	if err != nil && finding(err) {
		msg := err.Error()
		var de *damagedChunk
		if errors.As(err, &de) && d.o.Quarantine {
			d.mu.Lock()
			first := !d.quarantined[de.sha256]
			d.quarantined[de.sha256] = true
			d.mu.Unlock()
			if first {
				if qerr := backup.Quarantine(ctx, d.s, de.sha256, de.reason, d.o.Now()); qerr != nil {
					msg += fmt.Sprintf("; could not quarantine it (%v): run verify --deep --quarantine with the agent's credentials so the next backup heals it", qerr)
				} else {
					msg += "; quarantined: the next backup uploads it again, or takes a new base"
				}
			}
		} else if errors.As(err, &de) {
			msg += "; verify --deep --quarantine (with write access) marks it so the next backup uploads it again, or takes a new base"
		}
		d.mu.Lock()
		// Every frame of a damaged chunk finds it damaged: the first says so.
		if prev, ok := d.damaged[ob.SHA256]; ok {
			msg = prev
		} else {
			d.damaged[ob.SHA256] = msg
		}
		d.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", backup.ErrCorrupt, msg)
	}
	return b, err
}

// counted counts a chunk read from the store.
func (d *deepScope) counted(ob backup.Object) {
	d.read.Add(ob.Stored)
	d.mu.Lock()
	if !d.fetched[ob.SHA256] {
		d.fetched[ob.SHA256] = true
		d.objects.Add(1)
	}
	d.mu.Unlock()
	if d.progress != nil {
		d.progress(d.read.Load(), d.total)
	}
}

func readLocal(lc localChunk, f backup.Frame) ([]byte, error) {
	fh, err := os.Open(lc.path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b := getBuffer(f.Size)[:f.Size]
	if _, err := fh.ReadAt(b, lc.off); err != nil {
		putBuffer(b)
		return nil, err
	}
	return b, nil
}

// rebuild checks every base once and every delta over its base's image.
func (d *deepScope) rebuild(ctx context.Context, todo []*backup.Manifest) error {
	tmp, err := os.MkdirTemp(d.o.TempDir, "flowkeep-verify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	d.dir = tmp
	// One group per partition: its bases in order, each with its deltas.
	type part struct {
		uid string
		idx int
	}
	groups := map[part]map[string][]*backup.Manifest{}
	d.bases = map[string]int{}
	for _, m := range todo {
		k := part{m.Flow.UID, m.Partition.Index}
		if groups[k] == nil {
			groups[k] = map[string][]*backup.Manifest{}
		}
		bk := baseKey(m)
		if _, ok := groups[k][bk]; !ok {
			for _, ob := range m.Base.Chunks {
				d.bases[ob.SHA256]++
			}
		}
		groups[k][bk] = append(groups[k][bk], m)
	}
	keys := make([]part, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].uid != keys[j].uid {
			return keys[i].uid < keys[j].uid
		}
		return keys[i].idx < keys[j].idx
	})
	par := d.o.Parallel
	if par <= 0 {
		par = backup.DefaultParallel
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(par)
	for _, k := range keys {
		bases := groups[k]
		g.Go(func() error {
			order := make([]string, 0, len(bases))
			for b := range bases {
				order = append(order, b)
			}
			sort.Slice(order, func(i, j int) bool { return bases[order[i]][0].Created.Before(bases[order[j]][0].Created) })
			for _, b := range order {
				if err := d.checkBase(gctx, bases[b]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// baseKey names a base by its chunks (what is rebuilt), not by the sha256
// its manifest claims for it.
func baseKey(m *backup.Manifest) string {
	h := sha256.New()
	for _, ob := range m.Base.Chunks {
		fmt.Fprintf(h, "%s:%d\n", ob.SHA256, ob.Size)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkBase rebuilds the base ms share once, checks it, and checks each
// of their deltas over it (see checkDelta).
func (d *deepScope) checkBase(ctx context.Context, ms []*backup.Manifest) error {
	sort.Slice(ms, func(i, j int) bool { return ms[i].Created.Before(ms[j].Created) })
	first := ms[0]
	img := filepath.Join(d.dir, "base-"+baseKey(first)[:16]+".sqlite3")
	fo := FetchOptions{Workers: d.o.Workers, Memory: d.budget, Get: d.get}
	bo := fo
	bo.SHA256 = first.Base.SHA256
	err := d.fetchTo(ctx, first.Base.Chunks, img, bo)
	if err == nil {
		err = IntegrityCheck(ctx, img)
	}
	if err != nil {
		if d.classify(err) != nil {
			return fmt.Errorf("deep check of the base of backup %s: %w", first.ID, err)
		}
		for _, m := range ms {
			d.problem(m, "its base: "+err.Error())
		}
		return nil
	}
	for i, m := range ms {
		var err error
		switch {
		case m.Base.SHA256 != first.Base.SHA256:
			err = fmt.Errorf("%w: its base image does not match the sha256 it gives (the same chunks rebuilt for backup %s match that backup's)", backup.ErrCorrupt, first.ID)
		case m.Delta == nil:
			err = checkImage(ctx, img, m)
		default:
			err = d.checkDelta(ctx, img, m, fo, i == len(ms)-1 && d.ownBase(first))
		}
		if err != nil {
			if d.classify(err) != nil {
				return fmt.Errorf("deep check of backup %s: %w", m.ID, err)
			}
			d.problem(m, err.Error())
		}
	}
	return nil
}

// ownBase reports whether no other base names a chunk of m's: its image
// is then read by no other check.
func (d *deepScope) ownBase(m *backup.Manifest) bool {
	for _, ob := range m.Base.Chunks {
		if d.bases[ob.SHA256] > 1 {
			return false
		}
	}
	return true
}

// checkDelta fetches m's delta once, lays it over a copy of its base's
// image and checks the result against m. The base's last use (last) lays
// it over the base's image itself, which saves copying the image: nothing
// reads that image afterwards (no other base names its chunks, so its
// record of local frames is dropped first).
func (d *deepScope) checkDelta(ctx context.Context, base string, m *backup.Manifest, fo FetchOptions, last bool) error {
	dpath := filepath.Join(d.dir, "delta-"+m.ID+".sqlite3")
	fo.SHA256 = m.Delta.SHA256
	if err := d.fetchTo(ctx, m.Delta.Chunks, dpath, fo); err != nil {
		return fmt.Errorf("fetch delta of backup %s: %w", m.ID, err)
	}
	img := base
	if last {
		d.mu.Lock()
		for h, lc := range d.local {
			if lc.path == base {
				delete(d.local, h)
			}
		}
		d.mu.Unlock()
	} else {
		img = filepath.Join(d.dir, "image-"+m.ID+".sqlite3")
		defer removeDB(img)
		if err := copyFile(base, img); err != nil {
			return err
		}
	}
	if err := layDelta(ctx, img, dpath, m); err != nil {
		return err
	}
	return checkImage(ctx, img, m)
}

// fetchTo writes objects to a new file at path and records where each
// chunk lies in it, so later images read it from there.
func (d *deepScope) fetchTo(ctx context.Context, objs []backup.Object, path string, fo FetchOptions) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	var size int64
	for _, ob := range objs {
		size += ob.Size
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	err = FetchObjects(ctx, d.s, objs, f, fo, nil)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		removeDB(path)
		return err
	}
	d.mu.Lock()
	var off int64
	for _, ob := range objs {
		for fi, f := range ob.FrameList() {
			if k := frameKey(ob.SHA256, fi); d.local[k] == (localChunk{}) {
				d.local[k] = localChunk{path: path, off: off}
			}
			off += f.Size
		}
	}
	d.mu.Unlock()
	return nil
}

// copyFile copies src to a new scratch file dst (the kernel copies, or
// shares the blocks where the file system can); it is not synced.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
