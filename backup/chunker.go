package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// ChunkSize is the size of every chunk but a stream's last. 4 MiB pages of a
// partition image are 1024 SQLite pages of 4 KiB: unchanged page ranges give
// unchanged chunks.
const ChunkSize = 4 << 20

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
var (
	encoders = sync.Pool{New: func() any {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
		return e
	}}
	decoders = sync.Pool{New: func() any {
		d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxChunkBytes+1), zstd.IgnoreChecksum(true))
		return d
	}}
)

// Compress returns the stored form of a chunk.
func Compress(dst, src []byte) []byte {
	e := encoders.Get().(*zstd.Encoder)
	defer encoders.Put(e)
	return e.EncodeAll(src, dst[:0])
}

// Decompress returns a chunk's content, refusing more than limit bytes. It
// does not check the content: callers check its sha256.
func Decompress(dst, src []byte, limit int64) ([]byte, error) {
	d := decoders.Get().(*zstd.Decoder)
	defer decoders.Put(d)
	out, err := d.DecodeAll(src, dst[:0])
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("%w: chunk expands to more than %d bytes", ErrCorrupt, limit)
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

type chunkJob struct {
	i          int
	buf        []byte
	releaseRaw func() // gives the share of buf back (once it is compressed)
	release    func() // gives the rest of the chunk's share of the budget back
}

// done gives buf back to the pool and its share of the budget: the
// chunk's content is not needed once it is compressed (or known stored),
// only its compressed form, while that uploads.
func (j *chunkJob) done() {
	if j.buf == nil {
		return
	}
	b := j.buf[:cap(j.buf)]
	rawBuffers.Put(&b)
	j.buf = nil
	j.releaseRaw()
}

// Chunk buffers are shared by every upload of the process: memory follows
// the chunks in flight (bounded by the budget), not the partitions.
var (
	rawBuffers = sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}
	zBuffers   = sync.Pool{New: func() any { b := make([]byte, 0, ChunkSize+ChunkSize/8); return &b }}
	// sealBuffers hold a chunk's encrypted form (ChunkSize+ChunkSize/8
	// and room for age's header and tags).
	sealBuffers = sync.Pool{New: func() any { b := make([]byte, 0, ChunkSize+ChunkSize/8+64<<10); return &b }}
)

// upload reads r to EOF and returns its chunks, total size and sha256.
func (u *uploader) upload(ctx context.Context, r io.Reader) ([]Object, int64, string, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers := max(u.workers, 1)
	jobs := make(chan chunkJob, workers)
	var mu sync.Mutex
	var objs []Object
	var wg sync.WaitGroup
	var failed error
	var failOnce sync.Once
	fail := func(err error) { failOnce.Do(func() { failed = err; cancel(err) }) }
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				zp := zBuffers.Get().(*[]byte)
				o, z, err := u.storeChunk(ctx, j.buf, *zp, j.done)
				*zp = z[:0]
				zBuffers.Put(zp)
				j.done()
				j.release()
				if err != nil {
					fail(err)
					continue
				}
				mu.Lock()
				for len(objs) <= j.i {
					objs = append(objs, Object{})
				}
				objs[j.i] = o
				mu.Unlock()
			}
		}()
	}
	whole := sha256.New()
	size, n, err := u.produce(ctx, r, whole, jobs)
	close(jobs)
	wg.Wait()
	if failed != nil {
		return nil, 0, "", failed
	}
	if err != nil {
		return nil, 0, "", err
	}
	return objs[:n], size, hex.EncodeToString(whole.Sum(nil)), nil
}

func (u *uploader) produce(ctx context.Context, r io.Reader, whole hash.Hash, jobs chan<- chunkJob) (int64, int, error) {
	var size int64
	n := 0
	for {
		releaseRaw, release, err := u.budget.AcquireSplit(ctx, ChunkCost(ChunkSize), ChunkSize)
		if err != nil {
			return 0, 0, context.Cause(ctx)
		}
		buf := *rawBuffers.Get().(*[]byte)
		k, err := io.ReadFull(r, buf)
		if k > 0 {
			whole.Write(buf[:k])
			size += int64(k)
			u.xfer.BytesRead.Add(int64(k))
			if u.xfer.Also != nil {
				u.xfer.Also.BytesRead.Add(int64(k))
			}
			select {
			case jobs <- chunkJob{i: n, buf: buf[:k], releaseRaw: releaseRaw, release: release}:
			case <-ctx.Done():
				releaseRaw()
				release()
				return 0, 0, context.Cause(ctx)
			}
			n++
		} else {
			releaseRaw()
			release()
			rawBuffers.Put(&buf)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return size, n, nil
		}
		if err != nil {
			return 0, 0, err
		}
	}
}

// storeChunk stores chunk b (unless it is known stored) and calls
// doneWithRaw as soon as it no longer reads b.
func (u *uploader) storeChunk(ctx context.Context, b, zbuf []byte, doneWithRaw func()) (Object, []byte, error) {
	h := u.cipher.ContentID(b)
	o, known := u.known[h]
	if known && o.Size == int64(len(b)) {
		ok, err := confirm(ctx, u.store, o, u.lock)
		if err != nil {
			return o, zbuf, err
		}
		if ok {
			u.skipped()
			return o, zbuf, nil
		}
	}
	z := Compress(zbuf, b)
	size := int64(len(b))
	if u.cipher == nil {
		// Sealing holds a third buffer, which b's share of the budget
		// stands for until the upload ends.
		doneWithRaw()
	}
	stored := z
	if u.cipher != nil {
		sp := sealBuffers.Get().(*[]byte)
		defer sealBuffers.Put(sp)
		var err error
		if stored, err = u.cipher.sealChunk(*sp, z, h); err != nil {
			return o, z, err
		}
		*sp = stored[:0]
	}
	o = Object{SHA256: h, Size: size, Stored: int64(len(stored))}
	if u.cipher == nil {
		// An encrypted chunk is checked by its keyed name on every read
		// (age alone does not pin it: anyone with the public keys can seal).
		o.StoredSHA256 = SumHex(stored)
	}
	pctx := ctx
	if o.StoredSHA256 != "" {
		pctx = WithPayloadSHA256(ctx, o.StoredSHA256)
	}
	if there, err := u.put(pctx, o, stored, known || u.quarantined[h]); err != nil {
		return o, z, fmt.Errorf("upload chunk %s: %w", h[:12], err)
	} else if there {
		u.skipped()
		return o, z, nil
	}
	if known || u.quarantined[h] {
		u.xfer.ObjectsHealed.Add(1)
	}
	u.xfer.markStored(h)
	u.xfer.ObjectsUploaded.Add(1)
	u.xfer.BytesUploaded.Add(int64(len(stored)))
	if a := u.xfer.Also; a != nil {
		a.ObjectsUploaded.Add(1)
		a.BytesUploaded.Add(int64(len(stored)))
	}
	return o, z, nil
}

func (u *uploader) skipped() {
	u.xfer.ObjectsSkipped.Add(1)
	if u.xfer.Also != nil {
		u.xfer.Also.ObjectsSkipped.Add(1)
	}
}

// put stores chunk o's stored bytes. Without object lock it overwrites
// whatever is there (or, where a locked copy refuses that, reuses the copy
// once a Stat confirms its size). With it, a chunk is written only if absent, locked;
// one already stored with its size (another partition's, or a twin in the
// same stream) is confirmed and its lock extended instead (there is true),
// and one damaged (heal: the last backup named it but it was missing or
// resized, or verify quarantined it) is replaced by a plain write, then
// locked: on S3 a new version over the damaged one; on GCS, where a locked
// object cannot be replaced, the error says so.
func (u *uploader) put(ctx context.Context, o Object, stored []byte, heal bool) (there bool, err error) {
	key := ChunkKey(o.SHA256)
	lk := u.lock
	if lk == nil {
		err := u.store.Put(ctx, key, stored)
		if errors.Is(err, ErrObjectLocked) && !heal {
			// A locked copy is there already (the location was backed up
			// with --object-lock, and GCS refuses to replace it): reuse it.
			if ok, cerr := confirm(ctx, u.store, o, nil); cerr == nil && ok {
				return true, nil
			}
		}
		return false, err
	}
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
