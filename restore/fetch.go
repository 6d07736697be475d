package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/directio"
	"github.com/flowkeep/flowkeep/internal/fsync"
	"github.com/flowkeep/flowkeep/recovery"
)

// Progress receives bytes done and total while objects are fetched.
type Progress func(done, total int64)

// FetchOptions configure downloads.
type FetchOptions struct {
	Workers  int // chunks downloaded at once (default 8)
	Parallel int // partitions fetched at once (backup.DefaultParallel)
	Progress Progress
	// ImageSum also checks the sha256 of the whole assembled image (verify
	// --deep). Restores rely on every chunk's own sha256 and the validated,
	// ordered chunk list, which already pin the image down.
	ImageSum bool
	// Downloaded, if set, counts the stored (compressed) bytes fetched.
	Downloaded *atomic.Int64
}

// FetchObjects downloads objs in order into w, verifying each object's
// stored and uncompressed size and its sha256, and the whole stream's
// sha256 against wantSum. Several objects download at once; they are written
// in order.
func FetchObjects(ctx context.Context, s backup.Store, objs []backup.Object, wantSum string, w io.Writer, o FetchOptions, done *atomic.Int64) error {
	if o.ImageSum && len(wantSum) != 64 {
		return fmt.Errorf("%w: image sha256 %q is not a sha256", backup.ErrCorrupt, wantSum)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers := o.Workers
	if workers <= 0 {
		workers = 8
	}
	type result struct {
		data []byte
		err  error
	}
	slots := make([]chan result, len(objs))
	for i := range slots {
		slots[i] = make(chan result, 1)
	}
	next := make(chan int)
	var wg sync.WaitGroup
	// At most workers+window chunks are in memory at once.
	window := make(chan struct{}, workers*2)
	for k := 0; k < workers; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				b, err := FetchObject(ctx, s, objs[i])
				slots[i] <- result{b, err}
			}
		}()
	}
	go func() {
		defer close(next)
		for i := range objs {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	h := sha256.New()
	var err error
	for i := range objs {
		var r result
		select {
		case r = <-slots[i]:
		case <-ctx.Done():
			err = context.Cause(ctx)
		}
		if err != nil {
			break
		}
		<-window
		if r.err != nil {
			err = r.err
			break
		}
		if o.Downloaded != nil {
			o.Downloaded.Add(objs[i].Stored)
		}
		if o.ImageSum {
			h.Write(r.data)
		}
		_, werr := w.Write(r.data)
		putBuffer(r.data)
		if werr != nil {
			err = werr
			break
		}
		if done != nil {
			n := done.Add(int64(len(r.data)))
			if o.Progress != nil {
				o.Progress(n, -1)
			}
		}
	}
	cancel(err)
	wg.Wait()
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); o.ImageSum && got != wantSum {
		return fmt.Errorf("%w: assembled image sha256 %s, manifest says %s", backup.ErrCorrupt, got[:12], wantSum[:12])
	}
	return nil
}

// damagedChunk is a chunk that arrived damaged three times in a row: the
// damage is in the store, not in transit.
type damagedChunk struct {
	sha256 string
	reason string
}

func (d *damagedChunk) Error() string {
	return fmt.Sprintf("chunk %s is damaged in the store (%s, read three times)", d.sha256[:12], d.reason)
}

func (d *damagedChunk) Unwrap() error { return backup.ErrCorrupt }

// FetchObject downloads one chunk and verifies it. A chunk that arrives
// damaged is downloaded again (twice) before it is declared corrupt: damage
// in transit is not damage in the store.
func FetchObject(ctx context.Context, s backup.Store, ob backup.Object) ([]byte, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var b []byte
		if b, err = fetchObject(ctx, s, ob); err == nil || !errors.Is(err, backup.ErrCorrupt) {
			return b, err
		}
	}
	return nil, &damagedChunk{sha256: ob.SHA256, reason: strings.TrimPrefix(err.Error(), backup.ErrCorrupt.Error()+": ")}
}

func fetchObject(ctx context.Context, s backup.Store, ob backup.Object) ([]byte, error) {
	key := backup.ChunkKey(ob.SHA256)
	z, err := backup.ReadSized(ctx, s, key, ob.Stored)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", ob.SHA256[:12], err)
	}
	if int64(len(z)) != ob.Stored {
		return nil, fmt.Errorf("%w: chunk %s is %d bytes stored, manifest says %d (truncated)", backup.ErrCorrupt, ob.SHA256[:12], len(z), ob.Stored)
	}
	b, err := backup.Decompress(getBuffer(ob.Size), z, ob.Size)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", ob.SHA256[:12], err)
	}
	if int64(len(b)) != ob.Size || backup.SumHex(b) != ob.SHA256 {
		putBuffer(b)
		return nil, fmt.Errorf("%w: chunk %s does not match its sha256", backup.ErrCorrupt, ob.SHA256[:12])
	}
	return b, nil
}

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
// any failure nothing is left at path.
func FetchImage(ctx context.Context, s backup.Store, m *backup.Manifest, path string, o FetchOptions, done *atomic.Int64) (err error) {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("%s already exists", path)
	}
	tmp := path + ".restore-tmp"
	defer func() {
		if err != nil {
			removeDB(tmp)
			os.Remove(tmp + ".delta")
		}
	}()
	removeDB(tmp)
	f, err := directio.Create(tmp)
	if err != nil {
		return err
	}
	if err := FetchObjects(ctx, s, m.Base.Chunks, m.Base.SHA256, f, o, done); err != nil {
		f.Close()
		return fmt.Errorf("fetch base of backup %s: %w", m.ID, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if m.Delta != nil {
		dpath := tmp + ".delta"
		df, err := os.OpenFile(dpath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		err = FetchObjects(ctx, s, m.Delta.Chunks, m.Delta.SHA256, df, o, done)
		if cerr := df.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("fetch delta of backup %s: %w", m.ID, err)
		}
		db, err := recovery.OpenScratchDB(tmp)
		if err != nil {
			return err
		}
		// A base of an older schema is brought to this one first; the
		// delta (of either schema) is then laid over it.
		err = recovery.Migrate(ctx, db)
		if err == nil {
			err = backup.ApplyDelta(ctx, db, dpath, m.Delta.Watermark)
		}
		if err == nil {
			err = recovery.CloseScratchDB(ctx, db)
		} else {
			db.Close()
		}
		if err == nil {
			err = fsync.File(tmp)
		}
		os.Remove(dpath)
		if err != nil {
			if !isIOError(err) {
				err = fmt.Errorf("%w: %v", backup.ErrCorrupt, err)
			}
			return fmt.Errorf("backup %s: %w", m.ID, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return fsync.Dir(filepath.Dir(path))
}

// IntegrityCheck runs PRAGMA integrity_check on a SQLite file.
func IntegrityCheck(ctx context.Context, path string) error {
	db, err := recovery.OpenDB(path, true)
	if err != nil {
		return err
	}
	defer db.Close()
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
