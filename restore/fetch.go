package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/bufpool"
	"github.com/flowkeep/flowkeep/internal/directio"
	"github.com/flowkeep/flowkeep/recovery"
)

// Progress receives bytes done and total while objects are fetched.
type Progress func(done, total int64)

// FetchOptions configure downloads.
type FetchOptions struct {
	Workers  int // chunks downloaded at once (default 8)
	Parallel int // partitions fetched at once (backup.DefaultParallel)
	Progress Progress
	// Downloaded, if set, counts the stored (compressed) bytes fetched.
	Downloaded *atomic.Int64
	// Memory bounds the chunk data in memory at once, shared by every
	// partition fetched together (nil: only Workers chunks per partition
	// at once bound it).
	Memory *backup.Budget
	// Get, if set, fetches and verifies one frame of a chunk instead of
	// fetchFrame from the store (verify reads frames it already checked
	// from local images).
	Get func(ctx context.Context, p *piece) ([]byte, error)
	// Cipher opens encrypted chunks and checks their names: the Cipher of
	// the manifest naming them (FetchImage sets it).
	Cipher *backup.Cipher
	// flush, if set, makes the images durable while they are fetched
	// (restore sets it; deep verify's scratch images need not be).
	flush *flusher
	// SHA256, if set, is the sha256 the objects laid end to end must have
	// (the image's or the delta's, from its manifest): FetchObjects hashes
	// them in order as they arrive and fails with ErrCorrupt otherwise.
	SHA256 string
}

// FetchObjects downloads objs into w, each at its offset, verifying each
// chunk's stored size and each frame's size and sha256 (every frame's own
// name and the validated, ordered chunk list pin the whole image down).
// Each chunk is read once, and its frames are decoded and checked side by
// side, several chunks at once; each frame is written as soon as it is
// verified, by the goroutine that decoded it, so no frame waits for the one
// before it and the disk gets several writes at once. w should already
// have its final size.
func FetchObjects(ctx context.Context, s backup.Store, objs []backup.Object, w io.WriterAt, o FetchOptions, done *atomic.Int64) error {
	get := o.Get
	if get == nil {
		fc := frameCheck{cipher: o.Cipher}
		get = func(ctx context.Context, p *piece) ([]byte, error) { return fetchFrame(ctx, s, p, fc) }
	}
	workers := o.Workers
	if workers <= 0 {
		workers = 8
	}
	g, gctx := errgroup.WithContext(ctx)
	// Workers chunks are read at once, and each one's frames decoded side
	// by side (the budget bounds what they hold).
	g.SetLimit(workers * backup.ChunkSize / backup.FrameSize)
	var whole *orderedHash
	if o.SHA256 != "" {
		whole = &orderedHash{h: sha256.New(), held: map[int]heldChunk{}}
	}
	var off int64
	frames := 0
	var reads []*chunkRead
dispatch:
	for _, ob := range objs {
		// A chunk takes its share of the budget at once: its stored form
		// and room for frameSlots frames, which are decoded side by side
		// and held until the frames before them are hashed. A chunk that
		// has its share never needs more to finish, so the partitions that
		// share the budget never wait for each other in a circle.
		rd := &chunkRead{ob: ob}
		ps := rd.pieces()
		slots := min(len(ps), frameSlots)
		cost := ob.Stored
		if o.Cipher != nil {
			cost *= 2 // and its decrypted form
		}
		cost += int64(slots) * min(ob.Size, backup.FrameSize)
		share, err := o.Memory.Take(gctx, cost)
		if err != nil {
			break // the group's error, or ctx's, is returned below
		}
		rd.share, rd.left = share, len(ps)
		reads = append(reads, rd)
		free := make(chan struct{}, slots)
		for _, p := range ps {
			f := p.f
			at, i := off, frames
			off += f.Size
			frames++
			// Slots are taken in the frames' order: the frame that holds
			// one and waits to be hashed only waits for frames before it.
			select {
			case free <- struct{}{}:
			case <-gctx.Done():
				break dispatch
			}
			release := func() { <-free; rd.frameDone() }
			g.Go(func() error {
				b, err := get(gctx, p)
				if err != nil {
					release()
					return err
				}
				_, err = w.WriteAt(b, at)
				if whole != nil {
					// The frame stays in memory (in its slot) until the
					// frames before it are hashed.
					whole.add(i, b, release)
				} else {
					putBuffer(b)
					release()
				}
				if err != nil {
					return err
				}
				if o.Downloaded != nil {
					o.Downloaded.Add(p.storedShare())
				}
				if done != nil {
					n := done.Add(f.Size)
					if o.Progress != nil {
						o.Progress(n, -1)
					}
				}
				return nil
			})
		}
	}
	err := g.Wait()
	for _, rd := range reads {
		rd.release()
	}
	if whole != nil {
		whole.drop()
		if err == nil && ctx.Err() == nil {
			if whole.next != frames {
				return fmt.Errorf("%w: %d of %d frames hashed", backup.ErrCorrupt, whole.next, frames)
			}
			if got := hex.EncodeToString(whole.h.Sum(nil)); got != o.SHA256 {
				return fmt.Errorf("%w: the objects laid end to end do not match the sha256 their manifest gives (%s, not %s)", backup.ErrCorrupt, got[:12], o.SHA256[:min(12, len(o.SHA256))])
			}
		}
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}

// orderedHash hashes frames in their order in the file while they arrive
// in any order: a frame that arrives early is held until those before it
// are hashed; whoever completes the next one hashes every held one that
// follows. Each frame's buffer and budget are released once it is hashed.
type orderedHash struct {
	h       hash.Hash
	mu      sync.Mutex
	next    int
	hashing bool
	held    map[int]heldChunk
}

type heldChunk struct {
	b       []byte
	release func()
}

func (o *orderedHash) add(i int, b []byte, release func()) {
	o.mu.Lock()
	o.held[i] = heldChunk{b, release}
	if o.hashing {
		o.mu.Unlock()
		return
	}
	o.hashing = true
	for {
		c, ok := o.held[o.next]
		if !ok {
			break
		}
		delete(o.held, o.next)
		o.mu.Unlock()
		o.h.Write(c.b)
		putBuffer(c.b)
		c.release()
		o.mu.Lock()
		o.next++
	}
	o.hashing = false
	o.mu.Unlock()
}

// drop releases frames still held (a fetch that failed part-way).
func (o *orderedHash) drop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, c := range o.held {
		putBuffer(c.b)
		c.release()
		delete(o.held, i)
	}
}

// piece is one frame of a chunk being fetched.
type piece struct {
	chunk *chunkRead
	frame int          // its index in the chunk
	f     backup.Frame // its name and sizes
	zoff  int64        // where its zstd frame starts in the chunk's (decrypted) stored form
}

// pieces are the chunk's frames as pieces, each with where its zstd frame
// starts.
func (r *chunkRead) pieces() []*piece {
	fl := r.ob.FrameList()
	ps := make([]*piece, len(fl))
	var zoff int64
	for i, f := range fl {
		ps[i] = &piece{chunk: r, frame: i, f: f, zoff: zoff}
		zoff += f.Stored
	}
	return ps
}

// storedShare is the piece's share of its chunk's stored bytes (the last
// frame's carries what encryption adds).
func (p *piece) storedShare() int64 {
	if p.frame < len(p.chunk.ob.Frames)-1 {
		return p.f.Stored
	}
	return p.chunk.ob.Stored - p.zoff
}

// chunkRead is one chunk's stored form, read once from each store its
// frames are fetched from, and held until every frame is decoded.
type chunkRead struct {
	ob    backup.Object
	share *backup.Share
	mu    sync.Mutex
	left  int // frames not done yet
	reads map[backup.Store]*storedRead
	// dropped are damaged reads, whose buffers go back with the rest
	// (frames may still be decoding from them until then).
	dropped []*storedRead
	flaky   bool // counted as arrived damaged and then whole
}

// storedRead is one read of a chunk: its stored bytes, and the zstd frames
// they hold (decrypted, for an encrypted chunk).
type storedRead struct {
	stored []byte
	z      []byte
	pinned bool   // stored bytes match the sha256 the manifest records: the content is pinned
	err    error  // the read is damaged (ErrCorrupt)
	sum    string // sha256 of the stored bytes, once asked for
	bufs   []*[]byte
}

// storedBuffers hold chunks' stored and decrypted forms. They are mapped
// outside the Go heap (see bufpool): the collector neither counts their
// capacity nor clears them (allocated at each chunk's size, they cost a
// restore a third more CPU).
var storedBuffers = bufpool.NewHuge(4, backup.ChunkSize+backup.ChunkSize/8+bytes.MinRead)

// sameArray reports whether a and b end at the same place in one array (a
// slice of a pooled buffer must keep that buffer from the pool).
func sameArray(a, b []byte) bool {
	return cap(a) > 0 && cap(b) > 0 && &a[:cap(a)][cap(a)-1] == &b[:cap(b)][cap(b)-1]
}

// readInto reads key (size bytes) into a stored buffer, which it adds to
// sr's, unless the object is larger than they are.
func readInto(ctx context.Context, s backup.Store, key string, size int64, sr *storedRead) ([]byte, error) {
	bp := storedBuffers.Get()
	b, err := backup.ReadSizedInto(ctx, s, key, size, *bp)
	if err != nil || !sameArray(b, *bp) {
		storedBuffers.Put(bp)
		return b, err
	}
	sr.bufs = append(sr.bufs, bp)
	return b, nil
}

// damage is the sha256 of a damaged read's stored bytes (to tell the
// store's damage, the same at every read, from the link's).
func (r *chunkRead) damage(sr *storedRead) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if sr.sum == "" {
		sr.sum = backup.SumHex(sr.stored)
	}
	return sr.sum
}

// load returns the chunk's current read from s, reading it if there is
// none. A read that failed is not kept: the next load reads again.
func (r *chunkRead) load(ctx context.Context, s backup.Store, fc frameCheck) (*storedRead, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if sr := r.reads[s]; sr != nil {
		return sr, nil
	}
	ob := r.ob
	sr := &storedRead{}
	stored, err := readInto(ctx, s, backup.ChunkKey(ob.SHA256), ob.Stored, sr)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", ob.SHA256[:12], err)
	}
	if fc.onRead != nil {
		fc.onRead(ob)
	}
	sr.stored, sr.z = stored, stored
	if int64(len(stored)) != ob.Stored {
		sr.err = fmt.Errorf("%w: chunk %s is %d bytes stored, manifest says %d (truncated)", backup.ErrCorrupt, ob.SHA256[:12], len(stored), ob.Stored)
	} else {
		// The stored bytes' sha256, where the backup recorded it, pins the
		// content of a plaintext chunk (decompression is a function of
		// them). An encrypted chunk is always checked against its keyed
		// names: age authenticates only against a key its writer chose,
		// and anyone with the recipients' public keys can seal a chunk.
		sr.pinned = !fc.content && fc.cipher == nil && ob.StoredSHA256 != "" && backup.SumHex(stored) == ob.StoredSHA256
		if fc.cipher != nil {
			op := storedBuffers.Get()
			if sr.z, err = fc.cipher.OpenChunk(*op, stored, ob.SHA256); err != nil {
				sr.err = fmt.Errorf("chunk %s: %w", ob.SHA256[:12], err)
			}
			if err == nil && sameArray(sr.z, *op) {
				// The frames start after the name, inside the buffer.
				sr.bufs = append(sr.bufs, op)
			} else {
				storedBuffers.Put(op)
			}
		}
		if sr.err == nil && len(ob.Frames) > 0 {
			var n int64
			for _, f := range ob.Frames {
				n += f.Stored
			}
			if n != int64(len(sr.z)) {
				sr.err = fmt.Errorf("%w: chunk %s holds %d bytes of frames, its frames add up to %d", backup.ErrCorrupt, ob.SHA256[:12], len(sr.z), n)
			}
		}
	}
	if r.reads == nil {
		r.reads = map[backup.Store]*storedRead{}
	}
	r.reads[s] = sr
	return sr, nil
}

// firstFlaky reports whether this is the first frame of the chunk to say
// that it arrived damaged and then whole (the chunk counts once).
func (r *chunkRead) firstFlaky() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := !r.flaky
	r.flaky = true
	return first
}

// drop forgets a damaged read from s, so the next load reads again.
func (r *chunkRead) drop(s backup.Store, sr *storedRead) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reads[s] == sr {
		delete(r.reads, s)
		r.dropped = append(r.dropped, sr)
	}
}

// frameSlots is how many frames of one chunk are decoded, or wait to be
// hashed, at once.
const frameSlots = 2

// frameDone counts a frame done with (hashed, or failed); after the last
// one the chunk's reads and share are given back.
func (r *chunkRead) frameDone() {
	r.mu.Lock()
	r.left--
	last := r.left == 0
	r.mu.Unlock()
	if last {
		r.release()
	}
}

// release gives the chunk's buffers and share back (once).
func (r *chunkRead) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, sr := range r.reads {
		r.dropped = append(r.dropped, sr)
	}
	clear(r.reads)
	for _, sr := range r.dropped {
		for _, bp := range sr.bufs {
			storedBuffers.Put(bp)
		}
		sr.bufs = nil
	}
	r.dropped = nil
	r.share.Done()
}

// decode returns frame p's verified content from read sr.
func (p *piece) decode(sr *storedRead, fc frameCheck) ([]byte, error) {
	ob, f := p.chunk.ob, p.f
	if sr.err != nil {
		return nil, sr.err
	}
	z := sr.z
	if len(ob.Frames) > 0 {
		z = z[p.zoff : p.zoff+f.Stored]
	}
	// getBuffer's room is the frame's size or more: Decompress decodes
	// into it or fails.
	dst := getBuffer(f.Size)
	b, err := backup.Decompress(dst, z, f.Size)
	if err != nil {
		putBuffer(dst)
		return nil, fmt.Errorf("chunk %s: %w", ob.SHA256[:12], err)
	}
	if int64(len(b)) != f.Size || (!sr.pinned && fc.cipher.ContentID(b) != f.SHA256) {
		putBuffer(b)
		if len(ob.Frames) > 0 {
			return nil, fmt.Errorf("%w: chunk %s: frame %d does not match its sha256", backup.ErrCorrupt, ob.SHA256[:12], p.frame)
		}
		return nil, fmt.Errorf("%w: chunk %s does not match its sha256", backup.ErrCorrupt, ob.SHA256[:12])
	}
	return b, nil
}

// damagedChunk is a chunk that two reads returned with the same damaged
// bytes: the damage is in the store, not in transit.
type damagedChunk struct {
	sha256 string
	reason string
}

func (d *damagedChunk) Error() string {
	return fmt.Sprintf("chunk %s is damaged in the store (%s; two reads returned the same damaged bytes)", d.sha256[:12], d.reason)
}

func (d *damagedChunk) Unwrap() error { return backup.ErrCorrupt }

// FetchObject downloads one chunk of a plaintext backup and verifies it. A
// chunk that arrives damaged is downloaded again (twice) before it is
// declared corrupt: damage in transit is not damage in the store.
func FetchObject(ctx context.Context, s backup.Store, ob backup.Object) ([]byte, error) {
	return FetchObjectWith(ctx, s, ob, nil)
}

// FetchObjectWith is FetchObject for a chunk of a backup encrypted with c
// (that manifest's Cipher; nil: plaintext), which decrypts it.
func FetchObjectWith(ctx context.Context, s backup.Store, ob backup.Object, c *backup.Cipher) ([]byte, error) {
	return chunkContent(ctx, ob, func(ctx context.Context, p *piece) ([]byte, error) {
		return fetchFrame(ctx, s, p, frameCheck{cipher: c})
	})
}

// chunkContent returns a whole chunk's verified content, its frames got by
// get one after the other.
func chunkContent(ctx context.Context, ob backup.Object, get func(context.Context, *piece) ([]byte, error)) ([]byte, error) {
	out := make([]byte, 0, ob.Size)
	err := eachFrame(ctx, ob, get, func(b []byte) { out = append(out, b...) })
	return out, err
}

// eachFrame gets each frame of chunk ob in order and hands its verified
// content to fn, which must not keep it.
func eachFrame(ctx context.Context, ob backup.Object, get func(context.Context, *piece) ([]byte, error), fn func([]byte)) error {
	rd := &chunkRead{ob: ob, share: &backup.Share{}}
	defer rd.release()
	for _, p := range rd.pieces() {
		b, err := get(ctx, p)
		if err != nil {
			return err
		}
		fn(b)
		putBuffer(b)
	}
	return nil
}

// ErrFlakyLink says reads of an object kept arriving damaged, each time
// differently: the link (a proxy, a NIC) corrupts what it carries; the
// store's copy may well be whole.
var ErrFlakyLink = errors.New("every read arrived damaged, each time differently: the network corrupts data in transit")

// Reads of one object before its damage is judged.
const (
	// damageReads is how many reads must return the same damaged bytes
	// for the damage to be the store's.
	damageReads = 2
	// maxReads bounds the reads of an object that keeps arriving damaged
	// differently (a flaky link).
	maxReads = 8
)

// frameCheck says how fetchFrame checks what it reads.
type frameCheck struct {
	cipher *backup.Cipher // the chunks' manifest's (nil: plaintext)
	// content makes it check every frame's content against its name even
	// where the stored bytes' sha256 is known (deep verify).
	content bool
	flaky   *atomic.Int64          // if set, counts chunks that arrived damaged and then whole
	onRead  func(ob backup.Object) // if set, called for every read of a chunk from the store
}

// fetchFrame returns frame p's verified content, reading its chunk from s
// unless a read of it is current. A chunk is damaged in the store only
// when two reads return the same damaged bytes; reads damaged each time
// differently are the link's doing (ErrFlakyLink after maxReads).
func fetchFrame(ctx context.Context, s backup.Store, p *piece, fc frameCheck) ([]byte, error) {
	ob := p.chunk.ob
	seen := map[string]int{} // sha256 of damaged stored bytes -> reads
	var err error
	for attempt := 0; attempt < maxReads; attempt++ {
		var sr *storedRead
		if sr, err = p.chunk.load(ctx, s, fc); err != nil {
			if errors.Is(err, backup.ErrCorrupt) {
				// Larger than the manifest says: nothing to compare.
				break
			}
			return nil, err
		}
		var b []byte
		if b, err = p.decode(sr, fc); err == nil {
			if attempt > 0 && fc.flaky != nil && p.chunk.firstFlaky() {
				fc.flaky.Add(1)
			}
			return b, nil
		}
		if !errors.Is(err, backup.ErrCorrupt) {
			return nil, err
		}
		sum := p.chunk.damage(sr)
		p.chunk.drop(s, sr)
		if seen[sum]++; seen[sum] >= damageReads {
			break // the same bytes again: the store's
		}
	}
	for _, n := range seen {
		if n >= damageReads {
			return nil, &damagedChunk{sha256: ob.SHA256, reason: strings.TrimPrefix(err.Error(), backup.ErrCorrupt.Error()+": ")}
		}
	}
	if len(seen) >= maxReads {
		return nil, fmt.Errorf("chunk %s: %w (%d reads)", ob.SHA256[:12], ErrFlakyLink, len(seen))
	}
	return nil, &damagedChunk{sha256: ob.SHA256, reason: strings.TrimPrefix(err.Error(), backup.ErrCorrupt.Error()+": ")}
}

// frameBuffers recycles the aligned buffers frames decompress into, so
// they can be written past the page cache without a copy. They are mapped
// outside the Go heap, in huge pages (see bufpool): made on the heap, a
// restore of 800 MiB spent 1.13x the CPU (system time 0.46 s against 0.31
// s) and 1.37x the time. A buffer must not be touched once given back.
var frameBuffers = bufpool.NewHuge(32, backup.FrameSize)

// getBuffer returns an empty, aligned buffer for n bytes.
func getBuffer(n int64) []byte {
	if n <= backup.FrameSize {
		return *frameBuffers.Get()
	}
	return directio.Buffer(int(n))
}

func putBuffer(b []byte) {
	if cap(b) == backup.FrameSize && directio.Aligned(b[:0]) {
		b = b[:0]
		frameBuffers.Put(&b)
	}
}

// FetchImage writes the partition image a manifest describes to path,
// which must not exist: the base, verified, then the delta laid over it. On
// any failure nothing is left at path. It works in a private directory
// beside path (as a restore does: see target), removed when it returns;
// if other users can change what that directory's path leads to, it lays
// the delta in a scratch directory under os.TempDir() and copies the
// result in. The image is not made durable here: a restore syncs its
// images in the background while it fetches them (see flusher), and each
// file once more, after it is trimmed and before it takes its final name
// (an fsync waited for on the way cost a restore a fifth of its time).
func FetchImage(ctx context.Context, s backup.Store, m *backup.Manifest, path string, o FetchOptions, done *atomic.Int64) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists", path)
	}
	t, err := openTarget(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer t.close()
	if t.work, err = makeWorkDir(t); err != nil {
		return err
	}
	if _, err := t.guard(""); err != nil {
		return err
	}
	w := t.sqlite()
	name := w.newName("image")
	if err := fetchImage(ctx, s, m, w, name, o, done); err != nil {
		return err
	}
	if t.scratch != nil {
		as := t.work.newName("image")
		f, err := t.copyIn(name, as, nil)
		if err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		name = as
	}
	return renameat(t.work.dir, name, t.dir, filepath.Base(path))
}

// fetchImage is FetchImage into a new file name in the work directory w:
// every file it writes there (the image, the delta, SQLite's beside them)
// is new, in a directory no one else can write in. SQLite reaches them by
// their paths: w must be where no other user can change what those lead
// to (target.sqlite()).
func fetchImage(ctx context.Context, s backup.Store, m *backup.Manifest, w *workDir, name string, o FetchOptions, done *atomic.Int64) (err error) {
	if m.Locked {
		return fmt.Errorf("backup %s: %w", m.ID, backup.ErrWrongIdentity)
	}
	o.Cipher = m.Cipher()
	dname := name + ".delta"
	defer func() {
		if err != nil {
			w.removeDB(name)
			w.root.Remove(dname)
		}
	}()
	// The delta (small) downloads while the base does, so that it is
	// there to lay as soon as the base is.
	var delta chan error
	if m.Delta != nil {
		dctx, cancel := context.WithCancel(ctx)
		delta = make(chan error, 1)
		go func(d chan<- error) { d <- fetchDelta(dctx, s, m, w, dname, o, done) }(delta)
		defer func() {
			cancel()
			if delta != nil {
				<-delta // over before its file is removed (deferred above)
			}
		}()
	}
	f, err := directio.CreateIn(w.root, name)
	if err != nil {
		return err
	}
	if err := f.Allocate(m.Base.Size); err != nil {
		f.Close()
		return err
	}
	bo := o
	bo.SHA256 = m.Base.SHA256
	err = FetchObjects(ctx, s, m.Base.Chunks, o.flush.track(f.File(), f), bo, done)
	if ferr := o.flush.untrack(f.File()); err == nil {
		err = ferr
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("fetch base of backup %s: %w", m.ID, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if m.Delta != nil {
		err, delta = <-delta, nil
		if err != nil {
			return err
		}
		err = layDelta(ctx, w.pathOf(name), w.pathOf(dname), m)
		w.root.Remove(dname)
		if err != nil {
			return err
		}
	}
	return nil
}

// fetchDelta downloads the delta of backup m into dname, a new file in w.
func fetchDelta(ctx context.Context, s backup.Store, m *backup.Manifest, w *workDir, dname string, o FetchOptions, done *atomic.Int64) error {
	df, err := w.create(dname)
	if err != nil {
		return err
	}
	o.SHA256 = m.Delta.SHA256
	err = FetchObjects(ctx, s, m.Delta.Chunks, df, o, done)
	if cerr := df.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fetch delta of backup %s: %w", m.ID, err)
	}
	return nil
}

// layDelta lays the delta file dpath of backup m over the image at path
// (its base). It does not sync the result.
func layDelta(ctx context.Context, path, dpath string, m *backup.Manifest) error {
	db, err := recovery.OpenScratchDB(path)
	if err != nil {
		return err
	}
	// A base of an older schema is brought to this one first; the delta
	// (of either schema) is then laid over it.
	err = recovery.Migrate(ctx, db)
	if err == nil {
		err = backup.ApplyDelta(ctx, db, dpath, m.Delta.Watermark)
	}
	if err == nil {
		err = recovery.CloseScratchDB(ctx, db)
	} else {
		db.Close()
	}
	if err != nil {
		if !isIOError(err) {
			err = fmt.Errorf("%w: %v", backup.ErrCorrupt, err)
		}
		return fmt.Errorf("backup %s: %w", m.ID, err)
	}
	return nil
}

// isIOError reports whether a SQLite error is about the disk (full, I/O)
// rather than about the data: those end a restore instead of discarding
// the backup.
func isIOError(err error) bool {
	return NoRoom(err) || sqliteCode(err) == 10 || errors.Is(err, syscall.EIO) // SQLITE_IOERR
}

// NoRoom reports whether err says a disk filled up: ENOSPC from a write,
// or SQLite's SQLITE_FULL from laying a delta or trimming an image.
func NoRoom(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || sqliteCode(err) == 13 // SQLITE_FULL
}

// sqliteCode is the primary SQLite result code err carries (-1: none).
func sqliteCode(err error) int {
	var ce interface{ Code() int }
	if errors.As(err, &ce) {
		return ce.Code() & 0xff
	}
	return -1
}
