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
	// Get, if set, fetches and verifies one object instead of FetchObject
	// (verify reads objects it already checked from local images).
	Get func(ctx context.Context, ob backup.Object) ([]byte, error)
	// Cipher opens encrypted chunks and checks their names: the Cipher of
	// the manifest naming them (FetchImage sets it).
	Cipher *backup.Cipher
	// SHA256, if set, is the sha256 the objects laid end to end must have
	// (the image's or the delta's, from its manifest): FetchObjects hashes
	// them in order as they arrive and fails with ErrCorrupt otherwise.
	SHA256 string
}

// FetchObjects downloads objs into w, each at its offset, verifying each
// object's stored and uncompressed size and its sha256 (every chunk's own
// sha256 and the validated, ordered chunk list pin the whole image down).
// Several objects download at once; each is written as soon as it is
// verified, by the goroutine that fetched it, so no chunk waits for the one
// before it and the disk gets several writes at once. w should already
// have its final size.
func FetchObjects(ctx context.Context, s backup.Store, objs []backup.Object, w io.WriterAt, o FetchOptions, done *atomic.Int64) error {
	get := o.Get
	if get == nil {
		get = func(ctx context.Context, ob backup.Object) ([]byte, error) {
			return FetchObjectWith(ctx, s, ob, o.Cipher)
		}
	}
	workers := o.Workers
	if workers <= 0 {
		workers = 8
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	var whole *orderedHash
	if o.SHA256 != "" {
		whole = &orderedHash{h: sha256.New(), held: map[int]heldChunk{}}
	}
	var off int64
	for i, ob := range objs {
		at := off
		off += ob.Size
		// The chunk's stored form (and its buffer) is done with once get
		// returns its content: that share goes back then, the content's
		// once it is written (and hashed).
		releaseStored, release, err := o.Memory.AcquireSplit(gctx, backup.ChunkCost(ob.Size), ob.Size+ob.Size/8)
		if err != nil {
			break // the group's error, or ctx's, is returned below
		}
		g.Go(func() error {
			b, err := get(gctx, ob)
			releaseStored()
			if err != nil {
				release()
				return err
			}
			_, err = w.WriteAt(b, at)
			if whole != nil {
				// The chunk stays in memory (and in the budget) until the
				// chunks before it are hashed.
				whole.add(i, b, release)
			} else {
				putBuffer(b)
				release()
			}
			if err != nil {
				return err
			}
			if o.Downloaded != nil {
				o.Downloaded.Add(ob.Stored)
			}
			if done != nil {
				n := done.Add(ob.Size)
				if o.Progress != nil {
					o.Progress(n, -1)
				}
			}
			return nil
		})
	}
	err := g.Wait()
	if whole != nil {
		whole.drop()
		if err == nil && ctx.Err() == nil {
			if whole.next != len(objs) {
				return fmt.Errorf("%w: %d of %d chunks hashed", backup.ErrCorrupt, whole.next, len(objs))
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

// orderedHash hashes chunks in their order in the file while they arrive
// in any order: a chunk that arrives early is held until those before it
// are hashed; whoever completes the next one hashes every held one that
// follows. Each chunk's buffer and budget are released once it is hashed.
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

// drop releases chunks still held (a fetch that failed part-way).
func (o *orderedHash) drop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, c := range o.held {
		putBuffer(c.b)
		c.release()
		delete(o.held, i)
	}
}

// damagedChunk is a chunk that arrived damaged three times in a row: the
// damage is in the store, not in transit.
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
	return fetchChecked(ctx, s, ob, c, false, nil)
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

// fetchChecked is FetchObject; content makes it check the content's name
// (sha256, or keyed hash) even where the stored bytes' sha256 is known
// (deep verify). An object is damaged in the store only when two reads
// return the same damaged bytes; reads damaged each time differently are
// the link's doing (ErrFlakyLink after maxReads). flaky, if set, counts
// objects that arrived damaged and then whole.
func fetchChecked(ctx context.Context, s backup.Store, ob backup.Object, c *backup.Cipher, content bool, flaky *atomic.Int64) ([]byte, error) {
	seen := map[string]int{} // sha256 of damaged stored bytes -> reads
	var err error
	for attempt := 0; attempt < maxReads; attempt++ {
		var b []byte
		var sum string
		if b, sum, err = fetchObject(ctx, s, ob, c, content); err == nil || !errors.Is(err, backup.ErrCorrupt) {
			if err == nil && attempt > 0 && flaky != nil {
				flaky.Add(1)
			}
			return b, err
		}
		if seen[sum]++; seen[sum] >= damageReads || sum == "" {
			break // the same bytes again (or nothing to compare): the store's
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

// fetchObject reads and checks one chunk; on damage it also returns the
// sha256 of the damaged stored bytes (to tell the store's damage, the same
// at every read, from the link's).
func fetchObject(ctx context.Context, s backup.Store, ob backup.Object, c *backup.Cipher, content bool) ([]byte, string, error) {
	key := backup.ChunkKey(ob.SHA256)
	zp := storedBuffers.Get().(*[]byte)
	defer storedBuffers.Put(zp)
	z, err := backup.ReadSizedInto(ctx, s, key, ob.Stored, *zp)
	if err != nil {
		return nil, "", fmt.Errorf("chunk %s: %w", ob.SHA256[:12], err)
	}
	b, err := checkChunk(z, ob, c, content)
	if err != nil && errors.Is(err, backup.ErrCorrupt) {
		return nil, backup.SumHex(z), err
	}
	return b, "", err
}

// checkChunk turns a chunk's stored bytes z into its verified content.
func checkChunk(z []byte, ob backup.Object, c *backup.Cipher, content bool) ([]byte, error) {
	if int64(len(z)) != ob.Stored {
		return nil, fmt.Errorf("%w: chunk %s is %d bytes stored, manifest says %d (truncated)", backup.ErrCorrupt, ob.SHA256[:12], len(z), ob.Stored)
	}
	// The stored bytes' sha256, where the backup recorded it, pins the
	// content of a plaintext chunk (decompression is a function of them).
	// An encrypted chunk is always checked against its keyed name: age
	// authenticates only against a key its writer chose, and anyone with
	// the recipients' public keys can seal a chunk.
	pinned := !content && c == nil && ob.StoredSHA256 != "" && backup.SumHex(z) == ob.StoredSHA256
	var err error
	if c != nil {
		op := openBuffers.Get().(*[]byte)
		defer openBuffers.Put(op)
		if z, err = c.OpenChunk(*op, z, ob.SHA256); err != nil {
			return nil, fmt.Errorf("chunk %s: %w", ob.SHA256[:12], err)
		}
	}
	b, err := backup.Decompress(getBuffer(ob.Size), z, ob.Size)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", ob.SHA256[:12], err)
	}
	if int64(len(b)) != ob.Size || (!pinned && c.ContentID(b) != ob.SHA256) {
		putBuffer(b)
		return nil, fmt.Errorf("%w: chunk %s does not match its sha256", backup.ErrCorrupt, ob.SHA256[:12])
	}
	return b, nil
}

// storedBuffers recycles the buffers chunks are read into before they are
// decompressed.
var storedBuffers = sync.Pool{New: func() any { b := make([]byte, 0, backup.ChunkSize+backup.ChunkSize/8+bytes.MinRead); return &b }}

// openBuffers recycles the buffers encrypted chunks decrypt into.
var openBuffers = sync.Pool{New: func() any { b := make([]byte, 0, backup.ChunkSize+backup.ChunkSize/8+bytes.MinRead); return &b }}

// chunkBuffers recycles the aligned buffers whole chunks decompress into,
// so they can be written past the page cache without a copy.
var chunkBuffers = sync.Pool{New: func() any { b := directio.Buffer(backup.ChunkSize); return &b }}

// getBuffer returns an empty, aligned buffer for n bytes.
func getBuffer(n int64) []byte {
	if n <= backup.ChunkSize {
		return (*chunkBuffers.Get().(*[]byte))[:0]
	}
	return directio.Buffer(int(n))
}

func putBuffer(b []byte) {
	if cap(b) == backup.ChunkSize && directio.Aligned(b[:0]) {
		b = b[:0]
		chunkBuffers.Put(&b)
	}
}

// FetchImage writes the partition image a manifest describes to path,
// which must not exist: the base, verified, then the delta laid over it. On
// any failure nothing is left at path. It works in a private directory
// beside path (as a restore does: see target), removed when it returns;
// if other users can change what that directory's path leads to, it lays
// the delta in a scratch directory under os.TempDir() and copies the
// result in. The image is not synced to disk: a restore syncs each file
// once, after it is trimmed and before it takes its final name (each
// fsync on the way cost a restore a fifth of its time).
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
	if err := FetchObjects(ctx, s, m.Base.Chunks, f, bo, done); err != nil {
		f.Close()
		return fmt.Errorf("fetch base of backup %s: %w", m.ID, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if m.Delta != nil {
		df, err := w.create(dname)
		if err != nil {
			return err
		}
		do := o
		do.SHA256 = m.Delta.SHA256
		err = FetchObjects(ctx, s, m.Delta.Chunks, df, do, done)
		if cerr := df.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("fetch delta of backup %s: %w", m.ID, err)
		}
		err = layDelta(ctx, w.pathOf(name), w.pathOf(dname), m)
		w.root.Remove(dname)
		if err != nil {
			return err
		}
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

var integrityOne sync.Mutex

// IntegrityCheck runs PRAGMA integrity_check on a SQLite file.
func IntegrityCheck(ctx context.Context, path string) error {
	db, err := recovery.OpenDB(path, true)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	// No memory map: mapped pages count in the process's RSS (and in its
	// cgroup's memory), and a 128 MiB map took a deep verify's peak from
	// about 220 to 355 MiB for no measurable gain in its time. Checks run
	// one at a time.
	integrityOne.Lock()
	defer integrityOne.Unlock()
	if _, err := db.ExecContext(ctx, `PRAGMA mmap_size=0`); err != nil {
		return err
	}
	rows, err := db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return fmt.Errorf("%w: integrity_check: %v", backup.ErrCorrupt, err)
	}
	defer rows.Close()
	var msgs []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return fmt.Errorf("%w: integrity_check: %v", backup.ErrCorrupt, err)
		}
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%w: integrity_check: %v", backup.ErrCorrupt, err)
	}
	if len(msgs) != 1 || msgs[0] != "ok" {
		return fmt.Errorf("%w: integrity_check: %v", backup.ErrCorrupt, msgs)
	}
	return nil
}

// isIOError reports whether a SQLite error is about the disk (full, I/O)
// rather than about the data: those end a restore instead of discarding
// the backup.
func isIOError(err error) bool {
	var ce interface{ Code() int }
	if errors.As(err, &ce) {
		switch ce.Code() & 0xff {
		case 10, 13: // SQLITE_IOERR, SQLITE_FULL
			return true
		}
	}
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EIO)
}
