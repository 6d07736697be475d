package backup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"time"
)

// Store is an object store, the one seam between backups and a backend.
//
// Contract, for every backend:
//   - Keys are slash-separated paths relative to the store's root; they never
//     start with "/" and never contain "." or ".." segments.
//   - Put writes the whole object or nothing: a reader never sees a partial
//     object. It overwrites. It is idempotent.
//   - PutIfAbsent writes only if no object exists at key and returns
//     ErrExists otherwise; the check and the write are atomic (S3
//     If-None-Match, GCS DoesNotExist, a hard link on files).
//   - A Put, PutIfAbsent or PutIfMatch that returned nil is visible to
//     every later Get, GetVersion, Stat and List.
//   - Get, GetVersion and Stat return an error wrapping ErrNotFound when
//     the object does not exist.
//   - List calls fn for every object whose key starts with prefix and, if
//     after is not empty, is greater than after, in lexical (byte) key
//     order; it stops at fn's first error and returns it. It streams: a
//     backend never holds a whole listing in memory, so a listing of a
//     million objects costs what one page of it costs.
//   - Delete removes an object; deleting a missing object is not an error.
//   - GetVersion reads a whole object (refusing more than limit bytes with
//     a *SizeError) and the ObjectVersion of what it read, in one request:
//     the bytes and the version belong to the same write.
//   - PutIfMatch is a compare-and-swap: it writes data only if the object's
//     current version is v (the zero ObjectVersion: only if there is no
//     object), and returns the new version; otherwise it writes nothing and
//     returns an error wrapping ErrConflict (changed, deleted, or, for the
//     zero v, present). The check and the write are atomic against every
//     other PutIfMatch and PutIfAbsent (S3 If-Match and If-None-Match, GCS
//     generation preconditions, a lock file and a rename on files). A
//     backend does not retry a PutIfMatch on its own: a write whose answer
//     was lost returns that error, never ErrConflict for its own write (the
//     retry decorator recognises such a write; see WithRetry).
//   - An ObjectVersion is opaque and compared only for equality. It changes
//     with every write of new content but may repeat when the same bytes
//     are written again (S3's ETag is their MD5, the file backend's a hash
//     of them), so a conditional writer makes every write's content unique
//     (a lock body names its holder and its times).
//   - Errors are wrapped with the backend's context; ErrAccess marks
//     credentials or permission problems, ErrNoBucket a missing bucket.
type Store interface {
	Put(ctx context.Context, key string, data []byte) error
	PutIfAbsent(ctx context.Context, key string, data []byte) error
	PutIfMatch(ctx context.Context, key string, data []byte, v ObjectVersion) (ObjectVersion, error)
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	GetVersion(ctx context.Context, key string, limit int64) ([]byte, ObjectVersion, error)
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	List(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error
	Delete(ctx context.Context, key string) error
	// String names the store for messages, e.g. "s3://bucket/prefix".
	String() string
	Close() error
}

// TempSweeper is implemented by stores that keep temporary files of their
// own (the file backend): SweepTemp removes those older than age, which a
// writer killed mid-write left behind, and says how many.
type TempSweeper interface {
	SweepTemp(ctx context.Context, age time.Duration) (int, error)
}

// ObjectVersion names one write of an object, as PutIfMatch compares it:
// S3's ETag, GCS's generation, a hash of the content on files. The zero
// ObjectVersion names no object.
type ObjectVersion string

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key      string
	Size     int64
	Modified time.Time
	// Retention is the object's lock, where the backend reports it (a
	// Retainer's Stat does); zero when it has none or it is not known.
	Retention Retention
}

// Errors a caller acts on.
var (
	ErrNotFound = errors.New("object not found")
	ErrExists   = errors.New("object already exists")
	// ErrConflict says a PutIfMatch found the object changed since the
	// version it was given (another writer was first).
	ErrConflict = errors.New("object changed since it was read")
	ErrAccess   = errors.New("access denied")
	ErrNoBucket = errors.New("bucket does not exist")
	// ErrCorrupt marks an object whose content does not match its manifest.
	ErrCorrupt = errors.New("corrupt backup object")
)

// ReadAll reads an object, refusing more than limit bytes (a manifest that
// claims a small object must not make us read a huge one).
func ReadAll(ctx context.Context, s Store, key string, limit int64) ([]byte, error) {
	return read(ctx, s, key, limit, 0)
}

// readParsed reads the object at key (at most limit bytes) and parses it.
// A body that is too long or does not parse is read again: a byte flipped
// or a body cut short in transit is not damage in the store. The last
// error is returned once two reads gave the same unparsable bytes (the
// store's copy is damaged), or after MaxReads reads damaged each time
// differently (the link's doing). Other read errors are returned at once.
func readParsed[T any](ctx context.Context, s Store, key string, limit int64, parse func([]byte) (T, error)) (T, error) {
	var v T
	var err error
	seen := map[string]bool{}
	for attempt := 0; attempt < MaxReads; attempt++ {
		var b []byte
		if b, err = ReadAll(ctx, s, key, limit); err != nil {
			if errors.Is(err, ErrCorrupt) {
				continue
			}
			return v, err
		}
		if v, err = parse(b); err == nil {
			return v, nil
		}
		sum := SumHex(b)
		if seen[sum] {
			return v, err // the same damaged bytes twice: the store's
		}
		seen[sum] = true
	}
	return v, err
}

// MaxReads bounds the reads of an object that keeps arriving damaged, each
// time differently.
const MaxReads = 8

// ReadSized reads an object the manifest says is size bytes (at most a
// chunk's bound), into a buffer of that size from the start; it refuses more.
func ReadSized(ctx context.Context, s Store, key string, size int64) ([]byte, error) {
	return read(ctx, s, key, size, min(size, MaxChunkBytes+MaxChunkBytes/8))
}

// ReadSizedInto is ReadSized into dst's array when it is large enough (a
// restore recycles its buffers: allocating one per chunk made garbage
// collection a fifth of a restore's time).
func ReadSizedInto(ctx context.Context, s Store, key string, size int64, dst []byte) ([]byte, error) {
	if int64(cap(dst)) < size+bytes.MinRead {
		return ReadSized(ctx, s, key, size)
	}
	return readInto(ctx, s, key, size, dst[:0])
}

func read(ctx context.Context, s Store, key string, limit, prealloc int64) ([]byte, error) {
	return readInto(ctx, s, key, limit, make([]byte, 0, prealloc+bytes.MinRead))
}

// readInto reads the object at key (at most limit bytes) into dst's array
// (grown if it is too small).
func readInto(ctx context.Context, s Store, key string, limit int64, dst []byte) ([]byte, error) {
	if r, ok := s.(*retrying); ok {
		return r.getInto(ctx, key, limit, dst)
	}
	rc, err := s.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := bytes.NewBuffer(dst)
	if _, err := buf.ReadFrom(io.LimitReader(rc, limit+1)); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	if int64(len(b)) > limit {
		return nil, &SizeError{Key: key, Limit: limit}
	}
	return b, nil
}

// ReadLimited reads r to its end, refusing more than limit bytes with a
// *SizeError naming key: backends read GetVersion's body with it.
func ReadLimited(r io.Reader, key string, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, &SizeError{Key: key, Limit: limit}
	}
	return b, nil
}

// SizeError says an object is larger than it may be.
type SizeError struct {
	Key   string
	Limit int64
}

func (e *SizeError) Error() string {
	return "object " + e.Key + " is larger than the " + strconv.FormatInt(e.Limit, 10) + " bytes expected"
}

func (e *SizeError) Unwrap() error { return ErrCorrupt }

type payloadSHA256Key struct{}

// WithPayloadSHA256 tells a Put under ctx the hex sha256 of the data it
// writes, which its caller already computed: a store that signs or checks
// the body with it (S3's SigV4 payload hash) need not hash the body again.
// A wrong one makes the write fail (the server checks it), never stores
// other bytes.
func WithPayloadSHA256(ctx context.Context, sum string) context.Context {
	return context.WithValue(ctx, payloadSHA256Key{}, sum)
}

// PayloadSHA256 is the hex sha256 WithPayloadSHA256 gave ctx, or "".
func PayloadSHA256(ctx context.Context) string {
	s, _ := ctx.Value(payloadSHA256Key{}).(string)
	return s
}
