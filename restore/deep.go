package restore

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

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
// Partitions are checked side by side (at most Parallel, and images of
// about deepScratch bytes at once), within one memory budget. A rebuilt
// file (image or delta) goes as soon as its own checks are done and no
// fetch still to come reads a frame from it (deepSpares of them are kept
// to be written over), so the scratch directory holds about the images in
// flight, not every image the check rebuilds.

// deepScratch bounds the bytes of the images a deep check rebuilds at once
// (one partition at least, however large). Each image in flight is written
// in full to the page cache (and to the disk, for large ones), which
// restic check, say, never writes, and on a VM first touching those pages
// costs far more than writing them (200 MiB: 0.4 s of system time into new
// pages, 0.02 s over cached ones). One partition's fetch already decodes
// its frames on every core and keeps the budget's requests in flight.
// Measured on 4 partitions of 200 MiB with a delta each (2 cores, medians
// of 4, restic check run before each): one at a time 1.84 s, two 1.92 s,
// four 2.3 s; many small partitions still go side by side (up to
// Parallel), so that their requests' latencies overlap. (A variable for
// the tests.)
var deepScratch int64 = 256 << 20

// deepSpares is how many rebuilt files nothing reads any more are kept to
// be written over: the next partition's base and delta.
const deepSpares = 2

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
	files    atomic.Int64 // rebuilt files named so far
	progress func(done, total int64)
	total    int64

	mu          sync.Mutex
	local       map[string]localChunk     // verified frames on local disk, by frameKey
	pending     map[string]int            // chunk -> fetches still to come that name it
	retired     map[string]bool           // rebuilt files whose own checks are done
	spare       []spareFile               // rebuilt files nothing reads any more, kept to be written over
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

// localChunk is a verified frame of chunk inside a local file.
type localChunk struct {
	path  string
	off   int64
	chunk string
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
			return fmt.Errorf("%w: none of the %d encrypted backups opens with them%s", backup.ErrWrongIdentity, len(locked), sealedTo(locked[0]))
		}
		for _, m := range locked {
			problem(m, fmt.Sprintf("%v: not checked%s", backup.ErrWrongIdentity, sealedTo(m)))
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
		local: map[string]localChunk{}, pending: map[string]int{}, retired: map[string]bool{}, fetched: map[string]bool{}, damaged: map[string]string{}, quarantined: map[string]bool{},
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
	w, err := makeScratch(d.o.TempDir, "verify")
	if err != nil {
		return err
	}
	defer w.remove()
	d.dir = w.path
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
				d.pending[ob.SHA256]++
			}
		}
		if m.Delta != nil {
			for _, ob := range m.Delta.Chunks {
				d.pending[ob.SHA256]++
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
	scratch := semaphore.NewWeighted(deepScratch)
	for _, k := range keys {
		bases := groups[k]
		size := min(d.scratchSize(bases), deepScratch)
		if scratch.Acquire(gctx, size) != nil {
			break // the group's error, or ctx's, is returned below
		}
		g.Go(func() error {
			defer scratch.Release(size)
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
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// scratchSize is about the most a partition's checks hold in the scratch
// directory at once: a base, a copy of it where a delta is laid over a
// copy (see checkBase), and a delta.
func (d *deepScope) scratchSize(bases map[string][]*backup.Manifest) int64 {
	var most int64
	for _, ms := range bases {
		var deltas, delta int64
		for _, m := range ms {
			if m.Delta != nil {
				deltas++
				delta = max(delta, m.Delta.Size)
			}
		}
		size := ms[0].Base.Size + delta
		if deltas > 1 || deltas == 1 && !d.ownBase(ms[0]) {
			size += ms[0].Base.Size
		}
		most = max(most, size)
	}
	return most
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
	img := filepath.Join(d.dir, fmt.Sprintf("base-%d-%s.sqlite3", d.files.Add(1), baseKey(first)[:16]))
	fo := FetchOptions{Workers: d.o.Workers, Memory: d.budget, Get: d.get}
	bo := fo
	bo.SHA256 = first.Base.SHA256
	err := d.fetchTo(ctx, first.Base.Chunks, img, bo)
	defer d.retire(img)
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
	err := d.fetchTo(ctx, m.Delta.Chunks, dpath, fo)
	defer d.retire(dpath)
	if err != nil {
		return fmt.Errorf("fetch delta of backup %s: %w", m.ID, err)
	}
	img := base
	if last {
		d.mu.Lock()
		d.forget([]string{base})
		d.mu.Unlock()
	} else {
		img = filepath.Join(d.dir, "image-"+m.ID+".sqlite3")
		defer d.retire(img)
		if err := d.copyFile(base, img); err != nil {
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
	var size int64
	for _, ob := range objs {
		size += ob.Size
	}
	f, err := d.create(path, size)
	if err != nil {
		return err
	}
	err = FetchObjects(ctx, d.s, objs, f, fo, nil)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		removeDB(path)
	}
	d.mu.Lock()
	var off int64
	for _, ob := range objs {
		d.pending[ob.SHA256]--
		for fi, f := range ob.FrameList() {
			if k := frameKey(ob.SHA256, fi); err == nil && d.local[k] == (localChunk{}) {
				d.local[k] = localChunk{path: path, off: off, chunk: ob.SHA256}
			}
			off += f.Size
		}
	}
	gone := d.sweep()
	d.mu.Unlock()
	d.recycle(gone)
	return err
}

// retire says the checks of the rebuilt file at path are done: it is
// removed as soon as no fetch still to come reads a frame from it.
func (d *deepScope) retire(path string) {
	d.mu.Lock()
	d.retired[path] = true
	gone := d.sweep()
	d.mu.Unlock()
	d.recycle(gone)
}

// spareFile is a scratch file kept to be written over.
type spareFile struct {
	path string
	size int64
}

// create makes a scratch file of size bytes at path: a spare renamed, when
// there is one, so that its pages in the page cache are written over
// rather than freed and touched anew (see deepScratch); a small delta
// takes a small spare, not an image's. Every byte of it is written before
// it is read.
func (d *deepScope) create(path string, size int64) (*os.File, error) {
	d.mu.Lock()
	var spare string
	if n := len(d.spare); n > 0 {
		// The smallest that holds size bytes, else the largest (spares
		// are kept sorted by size).
		i, _ := slices.BinarySearchFunc(d.spare, size, func(f spareFile, size int64) int { return cmp.Compare(f.size, size) })
		i = min(i, n-1)
		spare = d.spare[i].path
		d.spare = slices.Delete(d.spare, i, i+1)
	}
	d.mu.Unlock()
	var f *os.File
	var err error
	if spare != "" && os.Rename(spare, path) == nil {
		f, err = os.OpenFile(path, os.O_RDWR, 0)
	} else {
		if spare != "" {
			os.Remove(spare)
		}
		f, err = os.Create(path)
	}
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// recycle keeps the largest deepSpares of the files nothing reads any more
// as spares, and removes the others.
func (d *deepScope) recycle(paths []string) {
	for _, p := range paths {
		removeBeside(p)
		st, err := os.Stat(p)
		if err != nil {
			continue
		}
		d.mu.Lock()
		d.spare = append(d.spare, spareFile{p, st.Size()})
		slices.SortFunc(d.spare, func(a, b spareFile) int { return cmp.Compare(a.size, b.size) })
		var drop []spareFile
		if n := len(d.spare) - deepSpares; n > 0 {
			drop = slices.Clone(d.spare[:n])
			d.spare = slices.Delete(d.spare, 0, n)
		}
		d.mu.Unlock()
		for _, f := range drop {
			os.Remove(f.path)
		}
	}
}

// sweep forgets the retired files no fetch still to come reads from and
// returns them, for the caller to remove (d.mu held). A fetch in progress
// keeps its chunks pending until it ends, so no file it reads goes.
func (d *deepScope) sweep() []string {
	if len(d.retired) == 0 {
		return nil
	}
	needed := map[string]bool{}
	for _, lc := range d.local {
		if d.pending[lc.chunk] > 0 {
			needed[lc.path] = true
		}
	}
	var gone []string
	for p := range d.retired {
		if !needed[p] {
			gone = append(gone, p)
			delete(d.retired, p)
		}
	}
	d.forget(gone)
	return gone
}

// forget drops the record of the frames in the files at paths (d.mu held).
func (d *deepScope) forget(paths []string) {
	if len(paths) == 0 {
		return
	}
	for k, lc := range d.local {
		if slices.Contains(paths, lc.path) {
			delete(d.local, k)
		}
	}
}

// copyFile copies src to a new scratch file dst (the kernel copies, or
// shares the blocks where the file system can); it is not synced.
func (d *deepScope) copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := d.create(dst, st.Size())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// sealedTo names the recipient set a backup that no identity opens is
// sealed to, where its plaintext index says (newer indexes do not).
func sealedTo(m *backup.Manifest) string {
	if m.Encryption == nil || m.Encryption.Recipients == "" {
		return ""
	}
	return " (sealed to recipient set " + m.Encryption.Recipients + ")"
}
