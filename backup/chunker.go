package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/flowkeep/flowkeep/internal/bufpool"
	"github.com/flowkeep/flowkeep/internal/sha256lanes"
)

// ChunkSize is the content of every chunk but a stream's last, and
// FrameSize that of every frame of a chunk but its last. Large chunks keep
// requests few (a first backup of 800 MiB in 4 partitions stores 28, and a
// restore reads as many); frames of 1024 SQLite pages of 4 KiB keep the
// memory and the parallelism of compressing, checking and writing as small
// chunks had them. Unchanged ranges of ChunkSize bytes dedupe.
const (
	ChunkSize = 32 << 20
	FrameSize = 4 << 20
)

// Transfer counts what a backup or restore moved.
type Transfer struct {
	ObjectsUploaded atomic.Int64
	BytesUploaded   atomic.Int64 // stored (compressed) bytes
	ObjectsSkipped  atomic.Int64 // confirmed already in the store
	ObjectsHealed   atomic.Int64 // known from the last backup, but not (whole) in the store: uploaded again
	BytesRead       atomic.Int64 // uncompressed bytes captured
	// Also, if set, counts the same reads, uploads and skips (one total
	// for several partitions' transfers: progress displays).
	Also *Transfer

	mu       sync.Mutex
	uploaded map[string]bool // chunks this transfer stored
}

func (t *Transfer) markStored(h string) {
	t.mu.Lock()
	if t.uploaded == nil {
		t.uploaded = map[string]bool{}
	}
	t.uploaded[h] = true
	t.mu.Unlock()
}

// stored reports whether this transfer uploaded chunk h.
func (t *Transfer) stored(h string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.uploaded[h]
}

// Chunks carry no zstd frame checksum, and one is not checked: every
// chunk's content is checked against its sha256 (its name) after it is
// decompressed, which the 64-bit xxhash would only repeat, more weakly, at
// a cost of 4% of a restore's CPU.
//
// Encoders and decoders are kept for good (a sync.Pool drops them at a
// collection, and a new one faults its buffers in again). An encoder's
// window is a frame, the most any match can reach back in the frames it is
// given, and its history no larger (zstd's default window of 8 MiB kept 16
// MiB of history per encoder): the compressed bytes are the same.
var (
	encoders = bufpool.NewFree(8, func() *zstd.Encoder {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false),
			zstd.WithWindowSize(FrameSize), zstd.WithLowerEncoderMem(true))
		return e
	})
	decoders = bufpool.NewFree(8, func() *zstd.Decoder { return newDecoder(false) })
	// cappedDecoders decode into dst's capacity and no further.
	cappedDecoders = bufpool.NewFree(8, func() *zstd.Decoder { return newDecoder(true) })
)

func newDecoder(capped bool) *zstd.Decoder {
	d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxChunkBytes+1), zstd.IgnoreChecksum(true),
		zstd.WithDecodeAllCapLimit(capped))
	return d
}

// compressing admits as many compressions at once as there are
// processors to run them: more would only time-share the processors, each
// holding an encoder's history.
var compressing = make(chan struct{}, runtime.GOMAXPROCS(0))

// Compress returns the stored form of a chunk.
func Compress(dst, src []byte) []byte {
	compressing <- struct{}{}
	defer func() { <-compressing }()
	e := encoders.Get()
	defer encoders.Put(e)
	return e.EncodeAll(src, dst[:0])
}

// Decompress returns a chunk's (or a frame's) content, refusing more than
// limit bytes. It does not check the content: callers check its sha256.
// Given a dst of limit bytes or more, it decodes into dst only and stops
// where content would outgrow it: a frame that expands past its size
// (anyone who can write to the bucket can store one) costs no more than
// dst to refuse, where decoding it up to MaxChunkBytes took a restore
// minutes and hundreds of MiB.
func Decompress(dst, src []byte, limit int64) ([]byte, error) {
	pool := decoders
	if int64(cap(dst)) >= limit {
		pool = cappedDecoders
	}
	d := pool.Get()
	defer pool.Put(d)
	out, err := d.DecodeAll(src, dst[:0])
	if errors.Is(err, zstd.ErrDecoderSizeExceeded) || (err == nil && int64(len(out)) > limit) {
		return nil, fmt.Errorf("%w: expands to more than %d bytes", ErrCorrupt, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
	}
	return out, nil
}

// SumHex is the hex sha256 of b.
func SumHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// uploader cuts a byte stream into chunks and stores each one that is not
// confirmed to exist, several at a time.
type uploader struct {
	store       Store
	known       map[string]Object // chunks the last backup named, by sha256: confirmed before reuse
	quarantined map[string]bool   // chunks verify found damaged: always uploaded
	workers     int
	xfer        *Transfer
	budget      *Budget // chunk data in memory, shared with other partitions
	cipher      *Cipher // names and seals chunks (nil: plaintext)
	lock        *locker // locks what is stored and extends what is reused (nil: no object lock)
}

// frameJob is one frame of a chunk, read and waiting to be compressed.
type frameJob struct {
	chunk *pendingChunk
	j     int
	buf   []byte // the frame's content (a rawBuffers buffer)
	id    string // its name, if it needs one (see compressFrame)
	// share stands for the content and the most its compressed form can
	// take; once compressed, for the compressed form, until the chunk is
	// stored.
	share *Share
}

// pendingChunk is a chunk whose frames are being compressed, side by side,
// each into its own buffer. The producer reads its frames and names it;
// whoever finishes its last part (the producer or a frame) stores it.
type pendingChunk struct {
	i  int
	mu sync.Mutex
	// frames' names and sizes, shares and compressed forms (frameBuffers
	// buffers), by index
	frames []Frame
	shares []*Share
	zs     []*[]byte
	// buf holds the frames end to end while the chunk is stored (a
	// chunkBuffers buffer; nil for a chunk of one frame, stored from it).
	buf  *[]byte
	todo int  // frames read and not compressed yet
	read bool // every frame read: id and size are known
	// abandoned says the producer stopped (an error): the chunk is only
	// released, once the frames sent are compressed.
	abandoned bool
	id        string
	size      int64
}

// frameSlot is the most a compressed frame can take (zstd's worst case
// adds a few bytes per 128 KiB block).
const frameSlot = FrameSize + FrameSize/8

// add counts a frame read.
func (p *pendingChunk) add() {
	p.mu.Lock()
	p.todo++
	p.mu.Unlock()
}

// compressed records frame j, compressed into z, and reports whether the
// chunk is complete.
func (p *pendingChunk) compressed(j int, f Frame, share *Share, z *[]byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.frames) <= j {
		p.frames, p.shares, p.zs = append(p.frames, Frame{}), append(p.shares, nil), append(p.zs, nil)
	}
	p.frames[j], p.shares[j], p.zs[j] = f, share, z
	p.todo--
	return p.read && p.todo == 0
}

// named records the chunk's name and size once its frames are all read,
// and reports whether the chunk is complete.
func (p *pendingChunk) named(id string, size int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.read, p.id, p.size = true, id, size
	return p.todo == 0
}

// abandon gives up the chunk, and reports whether no frame of it is being
// compressed (else the last one's worker releases it).
func (p *pendingChunk) abandon() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.read, p.abandoned = true, true
	return p.todo == 0
}

// unsent takes back a frame counted by add but never sent.
func (p *pendingChunk) unsent() {
	p.mu.Lock()
	p.todo--
	p.mu.Unlock()
}

// release gives the chunk's buffers and its frames' shares back.
func (p *pendingChunk) release() {
	for _, s := range p.shares {
		s.Done()
	}
	for j, z := range p.zs {
		if z != nil {
			frameBuffers.Put(z)
			p.zs[j] = nil
		}
	}
	if p.buf != nil {
		chunkBuffers.Put(p.buf)
		p.buf = nil
	}
}

// join returns pieces (the chunk's stored form) in one buffer, for a store
// that cannot take them as they are.
func (p *pendingChunk) join(pieces [][]byte) []byte {
	if len(pieces) == 1 {
		return pieces[0]
	}
	p.buf = chunkBuffers.Get()
	z := (*p.buf)[:0]
	for _, b := range pieces {
		z = append(z, b...)
	}
	return z
}

// Buffers are shared by every upload of the process: memory follows the
// frames and chunks in flight (bounded by the budget), not the partitions.
// They are kept across garbage collections (bufpool), about as many as are
// in flight within the default budget: a buffer made anew is faulted in
// page by page as it fills (keeping one chunk buffer only, a first backup
// of 4 partitions spent a tenth of its CPU on that). The compressed ones
// are mapped outside the heap: only the pages written take memory, and
// nothing clears them. A chunk's frames are compressed each into a buffer
// of its own and stored from those buffers as they are (S3), or copied end
// to end into a chunk buffer for a store that takes one buffer only.
// (Compressed into slots of one chunk buffer and moved end to end, a chunk
// held the pages of every slot the buffer had ever filled, about 24 MiB.)
var (
	rawBuffers   = bufpool.New(8, FrameSize)
	frameBuffers = bufpool.NewMapped(32, frameSlot)
	chunkBuffers = bufpool.NewMapped(4, ChunkSize/FrameSize*frameSlot)
)

// upload reads r to EOF and returns its chunks, total size and sha256.
// Chunks are cut every ChunkSize bytes and their frames every FrameSize:
// the frames of several chunks are compressed at once, and each chunk is
// stored as soon as its last frame is.
func (u *uploader) upload(ctx context.Context, r io.Reader) ([]Object, int64, string, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers := max(u.workers, 1)
	jobs := make(chan frameJob, workers)
	var mu sync.Mutex
	var objs []Object
	var wg, stores sync.WaitGroup
	var failed error
	var failOnce sync.Once
	fail := func(err error) { failOnce.Do(func() { failed = err; cancel(err) }) }
	store := func(p *pendingChunk) {
		if p.abandoned { // set before the last frame was done: no one else reads it now
			p.release()
			return
		}
		stores.Add(1)
		go func() {
			defer stores.Done()
			o, err := u.storeChunk(ctx, p)
			p.release()
			if err != nil {
				fail(err)
				return
			}
			mu.Lock()
			for len(objs) <= p.i {
				objs = append(objs, Object{})
			}
			objs[p.i] = o
			mu.Unlock()
		}()
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				f, z := u.compressFrame(j)
				if j.chunk.compressed(j.j, f, j.share, z) {
					store(j.chunk)
				}
			}
		}()
	}
	var sums sha256lanes.Hasher
	size, n, err := u.produce(ctx, r, &sums, jobs, store)
	close(jobs)
	wg.Wait()
	stores.Wait()
	if failed != nil {
		return nil, 0, "", failed
	}
	if err != nil {
		return nil, 0, "", err
	}
	return objs[:n], size, hex.EncodeToString(sums.Sum(laneWhole, nil)), nil
}

// compressFrame compresses frame j into a buffer of its own and records
// its name (a chunk of one short frame has none of its own: it is the
// chunk's), then gives its content's share back.
func (u *uploader) compressFrame(j frameJob) (Frame, *[]byte) {
	zb := frameBuffers.Get()
	z := Compress(*zb, j.buf)
	if len(z) > 0 && &z[0] != &(*zb)[:1][0] {
		panic("backup: a compressed frame outgrew its buffer") // zstd's bound makes this impossible
	}
	*zb = z
	f := Frame{SHA256: j.id, Size: int64(len(j.buf)), Stored: int64(len(z))}
	b := j.buf[:0]
	rawBuffers.Put(&b)
	kept := f.Stored
	if u.cipher != nil {
		kept *= 2 // an encrypted chunk is sealed into another buffer as large
	}
	j.share.Keep(kept)
	return f, zb
}

// The producer's digests, computed in one pass over what it reads (see
// sha256lanes): the whole stream's sha256, the name of the chunk being cut
// and that of the frame being cut (each restarted at a multiple of
// FrameSize: only a stream's last frame is short).
const (
	laneWhole = iota
	laneChunk
	laneFrame
)

// produce reads r frame by frame, names the frames and chunks (sums: see
// laneWhole), and sends the frames to be compressed.
func (u *uploader) produce(ctx context.Context, r io.Reader, sums *sha256lanes.Hasher, jobs chan<- frameJob, store func(*pendingChunk)) (int64, int, error) {
	key := u.cipher.contentKey()
	var size int64
	n := 0
	for {
		p := &pendingChunk{i: n}
		// stop ends the upload: the frames already sent are still being
		// compressed, and the chunk goes back only after them.
		stop := func(err error) (int64, int, error) {
			if p.abandon() {
				p.release()
			}
			return 0, 0, err
		}
		sums.Start(laneChunk, key)
		var csize int64
		eof := false
		for j := 0; csize < ChunkSize && !eof; j++ {
			share, err := u.budget.Take(ctx, FrameSize+frameSlot)
			if err != nil {
				return stop(context.Cause(ctx))
			}
			buf := (*rawBuffers.Get())[:FrameSize]
			sums.Start(laneFrame, key)
			k, err := io.ReadFull(r, buf)
			if k > 0 {
				sums.Write(buf[:k])
				id := ""
				if j > 0 || k == FrameSize {
					id = hex.EncodeToString(sums.Sum(laneFrame, nil))
				}
				csize += int64(k)
				u.xfer.BytesRead.Add(int64(k))
				if u.xfer.Also != nil {
					u.xfer.Also.BytesRead.Add(int64(k))
				}
				p.add()
				select {
				case jobs <- frameJob{chunk: p, j: j, buf: buf[:k], id: id, share: share}:
				case <-ctx.Done():
					p.unsent()
					share.Done()
					return stop(context.Cause(ctx))
				}
			} else {
				share.Done()
				buf = buf[:0]
				rawBuffers.Put(&buf)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				eof = true
			} else if err != nil {
				return stop(err)
			}
		}
		if csize == 0 {
			p.release()
			return size, n, nil
		}
		size += csize
		if p.named(hex.EncodeToString(sums.Sum(laneChunk, nil)), csize) {
			store(p)
		}
		n++
		if eof {
			return size, n, nil
		}
	}
}

// storeChunk stores chunk p (unless it is known stored): its frames end to
// end, sealed if the backup is encrypted.
func (u *uploader) storeChunk(ctx context.Context, p *pendingChunk) (Object, error) {
	h := p.id
	o, known := u.known[h]
	if known && o.Size == p.size {
		ok, err := confirm(ctx, u.store, o, u.lock)
		if err != nil {
			return o, err
		}
		if ok {
			u.skipped()
			return o, nil
		}
	}
	// The stored form is the frames end to end, each in its own buffer.
	stored := make([][]byte, len(p.zs))
	n := 0
	for j, z := range p.zs {
		stored[j] = *z
		n += len(*z)
	}
	o = Object{SHA256: h, Size: p.size, Stored: int64(n)}
	if len(p.frames) > 1 {
		o.Frames = slices.Clone(p.frames)
	}
	if u.cipher != nil {
		// age adds a header and 16 bytes per 64 KiB.
		sealed, err := u.cipher.sealChunk(make([]byte, 0, n+n/1024+64<<10), h, stored...)
		if err != nil {
			return o, err
		}
		stored = [][]byte{sealed}
		o.Stored = int64(len(sealed))
	} else {
		// An encrypted chunk is checked by its keyed name on every read
		// (age alone does not pin it: anyone with the public keys can seal).
		o.StoredSHA256 = sumPieces(stored)
	}
	pctx := ctx
	if o.StoredSHA256 != "" {
		pctx = WithPayloadSHA256(ctx, o.StoredSHA256)
	}
	if there, err := u.put(pctx, o, p, stored, known || u.quarantined[h]); err != nil {
		return o, fmt.Errorf("upload chunk %s: %w", h[:12], err)
	} else if there {
		u.skipped()
		return o, nil
	}
	if known || u.quarantined[h] {
		u.xfer.ObjectsHealed.Add(1)
	}
	u.xfer.markStored(h)
	u.xfer.ObjectsUploaded.Add(1)
	u.xfer.BytesUploaded.Add(o.Stored)
	if a := u.xfer.Also; a != nil {
		a.ObjectsUploaded.Add(1)
		a.BytesUploaded.Add(o.Stored)
	}
	return o, nil
}

func (u *uploader) skipped() {
	u.xfer.ObjectsSkipped.Add(1)
	if u.xfer.Also != nil {
		u.xfer.Also.ObjectsSkipped.Add(1)
	}
}

// put stores chunk o's stored form, pieces laid end to end (joined in
// p's buffer for a store that cannot take them as they are). Without
// object lock it overwrites whatever is there (or, where a locked copy
// refuses that, reuses the copy once a Stat confirms its size). With it,
// a chunk is written only if absent, locked; one already stored with its size (another partition's, or a twin in the
// same stream) is confirmed and its lock extended instead (there is true),
// and one damaged (heal: the last backup named it but it was missing or
// resized, or verify quarantined it) is replaced by a plain write, then
// locked: on S3 a new version over the damaged one; on GCS, where a locked
// object cannot be replaced, the error says so.
func (u *uploader) put(ctx context.Context, o Object, p *pendingChunk, pieces [][]byte, heal bool) (there bool, err error) {
	key := ChunkKey(o.SHA256)
	lk := u.lock
	if lk == nil {
		ok, err := putPieces(ctx, u.store, key, pieces)
		if !ok {
			err = u.store.Put(ctx, key, p.join(pieces))
		}
		if errors.Is(err, ErrObjectLocked) && !heal {
			// A locked copy is there already (the location was backed up
			// with --object-lock, and GCS refuses to replace it): reuse it.
			if ok, cerr := confirm(ctx, u.store, o, nil); cerr == nil && ok {
				return true, nil
			}
		}
		return false, err
	}
	stored := p.join(pieces)
	if !heal {
		err := lk.r.PutRetained(ctx, key, stored, lk.chunk())
		if !errors.Is(err, ErrExists) {
			return false, err
		}
		if ok, err := confirm(ctx, u.store, o, lk); err != nil || ok {
			return ok, err
		}
	}
	if err := u.store.Put(ctx, key, stored); err != nil {
		if errors.Is(err, ErrObjectLocked) || errors.Is(err, ErrAccess) {
			return false, fmt.Errorf("the stored copy is damaged and could not be replaced (a locked object can be replaced only once its lock ends): %w", err)
		}
		return false, err
	}
	return false, lk.r.SetRetention(ctx, key, lk.chunk())
}

// confirm reports whether chunk o is stored with its stored size; with
// object lock (lk), a stored one's lock is extended to what this backup
// needs.
func confirm(ctx context.Context, s Store, o Object, lk *locker) (bool, error) {
	oi, err := s.Stat(ctx, ChunkKey(o.SHA256))
	switch {
	case errors.Is(err, ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("confirm chunk %s is stored: %w", o.SHA256[:12], err)
	}
	if oi.Size != o.Stored {
		return false, nil
	}
	if lk != nil {
		if err := lk.keep(ctx, oi); err != nil {
			return false, err
		}
	}
	return true, nil
}

// confirmAll checks that every chunk in objs is stored with its size and
// not quarantined, several at once. It returns a note naming the first one
// that is not ("" if all are).
func confirmAll(ctx context.Context, s Store, objs []Object, quarantined map[string]bool, workers int, lk *locker) (string, error) {
	var g errgroup.Group
	g.SetLimit(max(workers, 1))
	var mu sync.Mutex
	var note string
	seen := map[string]bool{}
	for _, o := range objs {
		if seen[o.SHA256] {
			continue
		}
		seen[o.SHA256] = true
		if quarantined[o.SHA256] {
			return fmt.Sprintf("the base's chunk %s was quarantined by verify", o.SHA256[:12]), nil
		}
		g.Go(func() error {
			ok, err := confirm(ctx, s, o, lk)
			if err == nil && !ok {
				mu.Lock()
				if note == "" {
					note = fmt.Sprintf("the base's chunk %s is missing or truncated in the store", o.SHA256[:12])
				}
				mu.Unlock()
			}
			return err
		})
	}
	err := g.Wait()
	return note, err
}
