// Package gcs is the Google Cloud Storage backend of backup.Store, on
// cloud.google.com/go/storage: Application Default Credentials, and the
// emulator named by STORAGE_EMULATOR_HOST when it is set.
package gcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/flowkeep/flowkeep/backup"
)

// Options configure the client.
type Options struct {
	// HTTPClient, if set, is used for every request (tests inject faults).
	HTTPClient *http.Client
	// ChunkSize is the resumable upload chunk size; zero means 16 MiB.
	ChunkSize int
}

// Store is a bucket and key prefix.
type Store struct {
	client *storage.Client
	bucket *storage.BucketHandle
	name   string
	prefix string
	opts   Options
}

var _ backup.Store = (*Store)(nil)

// New connects to bucket and checks that it exists and is reachable.
func New(ctx context.Context, bucket, prefix string, o Options) (*Store, error) {
	var copts []option.ClientOption
	if o.HTTPClient != nil {
		copts = append(copts, option.WithHTTPClient(o.HTTPClient))
	}
	client, err := storage.NewClient(ctx, copts...)
	if err != nil {
		if strings.Contains(err.Error(), "could not find default credentials") {
			return nil, fmt.Errorf("gcs: %w: no Google credentials were found (set GOOGLE_APPLICATION_CREDENTIALS to a key file, run gcloud auth application-default login, or run where a service account is attached)", backup.ErrAccess)
		}
		return nil, fmt.Errorf("gcs: create client (credentials come from Application Default Credentials): %w", err)
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = 16 << 20
	}
	s := &Store{client: client, bucket: client.Bucket(bucket), name: bucket, prefix: strings.Trim(prefix, "/"), opts: o}
	if _, err := s.bucket.Attrs(ctx); err != nil {
		client.Close()
		return nil, s.wrap("open bucket", "", err)
	}
	return s, nil
}

func (s *Store) String() string { return backup.StoreURL("gs", s.name, s.prefix) }

// Close implements backup.Store.
func (s *Store) Close() error { return s.client.Close() }

func (s *Store) key(k string) (string, error) { return backup.PrefixedKey(s.prefix, k) }

func (s *Store) wrap(op, key string, err error) error {
	what := op
	if key != "" {
		what += " " + key
	}
	switch {
	case errors.Is(err, storage.ErrBucketNotExist):
		return fmt.Errorf("gcs: %s: %w: %s", what, backup.ErrNoBucket, s.name)
	case errors.Is(err, storage.ErrObjectNotExist):
		return fmt.Errorf("gcs: %s: %w", what, backup.ErrNotFound)
	}
	if lerr := lockError(what, err); lerr != nil {
		return lerr
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		switch ge.Code {
		case http.StatusNotFound:
			if key == "" {
				return fmt.Errorf("gcs: %s: %w: %s", what, backup.ErrNoBucket, s.name)
			}
			return fmt.Errorf("gcs: %s: %w", what, backup.ErrNotFound)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("gcs: %s: %w: check the credentials and the bucket's IAM policy", what, backup.ErrAccess)
		case http.StatusPreconditionFailed:
			return fmt.Errorf("gcs: %s: %w", what, backup.ErrExists)
		}
	}
	return fmt.Errorf("gcs: %s: %w", what, err)
}

func (s *Store) write(ctx context.Context, obj *storage.ObjectHandle, key string, data []byte) error {
	w := obj.NewWriter(ctx)
	w.ChunkSize = s.opts.ChunkSize
	if len(data) < s.opts.ChunkSize {
		w.ChunkSize = 0 // one request; still atomic
	}
	if _, err := w.Write(data); err != nil {
		w.Close()
		return s.wrap("put", key, err)
	}
	if err := w.Close(); err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// Put implements backup.Store.
func (s *Store) Put(ctx context.Context, key string, data []byte) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	return s.write(ctx, s.bucket.Object(k), key, data)
}

// PutIfAbsent implements backup.Store with a DoesNotExist precondition.
func (s *Store) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	return s.write(ctx, s.bucket.Object(k).If(storage.Conditions{DoesNotExist: true}), key, data)
}

// PutIfMatch implements backup.Store with a generation precondition
// (GenerationMatch, or DoesNotExist for the zero version). The client does
// not retry it: a retry of a write whose answer was lost would meet its
// own write as a conflict; the retry decorator retries it and tells the two
// apart.
func (s *Store) PutIfMatch(ctx context.Context, key string, data []byte, v backup.ObjectVersion) (backup.ObjectVersion, error) {
	k, err := s.key(key)
	if err != nil {
		return "", err
	}
	cond := storage.Conditions{DoesNotExist: true}
	if v != "" {
		gen, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || gen <= 0 {
			return "", fmt.Errorf("gcs: put %s: %w: version %q is not a generation", key, backup.ErrConflict, v)
		}
		cond = storage.Conditions{GenerationMatch: gen}
	}
	obj := s.bucket.Object(k).If(cond).Retryer(storage.WithPolicy(storage.RetryNever))
	w := obj.NewWriter(ctx)
	w.ChunkSize = 0 // one request (conditional objects are small)
	if _, err := w.Write(data); err != nil {
		w.Close()
		return "", s.conflict(key, err)
	}
	if err := w.Close(); err != nil {
		return "", s.conflict(key, err)
	}
	return backup.ObjectVersion(strconv.FormatInt(w.Attrs().Generation, 10)), nil
}

// conflict wraps a conditional write's error: a failed precondition (412,
// or 404 when the object to replace is gone) is ErrConflict.
func (s *Store) conflict(key string, err error) error {
	err = s.wrap("put", key, err)
	if errors.Is(err, backup.ErrExists) || errors.Is(err, backup.ErrNotFound) {
		return fmt.Errorf("gcs: put %s: %w", key, backup.ErrConflict)
	}
	return err
}

// GetVersion implements backup.Store: the generation read is the one the
// body belongs to.
func (s *Store) GetVersion(ctx context.Context, key string, limit int64) ([]byte, backup.ObjectVersion, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, "", err
	}
	r, err := s.bucket.Object(k).NewReader(ctx)
	if err != nil {
		return nil, "", s.wrap("get", key, err)
	}
	defer r.Close()
	b, err := backup.ReadLimited(r, key, limit)
	if err != nil {
		return nil, "", fmt.Errorf("gcs: get %s: %w", key, err)
	}
	if r.Attrs.Generation <= 0 {
		return nil, "", fmt.Errorf("gcs: get %s: the server sent no generation, which conditional writes need", key)
	}
	return b, backup.ObjectVersion(strconv.FormatInt(r.Attrs.Generation, 10)), nil
}

// Get implements backup.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	r, err := s.bucket.Object(k).NewReader(ctx)
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	return r, nil
}

// Stat implements backup.Store.
func (s *Store) Stat(ctx context.Context, key string) (backup.ObjectInfo, error) {
	k, err := s.key(key)
	if err != nil {
		return backup.ObjectInfo{}, err
	}
	a, err := s.bucket.Object(k).Attrs(ctx)
	if err != nil {
		return backup.ObjectInfo{}, s.wrap("stat", key, err)
	}
	return backup.ObjectInfo{Key: key, Size: a.Size, Modified: a.Updated, Retention: retentionOf(a.Retention)}, nil
}

// List implements backup.Store (GCS lists in lexical order).
func (s *Store) List(ctx context.Context, prefix, after string, fn func(backup.ObjectInfo) error) error {
	full := prefix
	if s.prefix != "" {
		full = s.prefix + "/" + prefix
	}
	q := &storage.Query{Prefix: full, Projection: storage.ProjectionNoACL}
	if after != "" {
		k := after // a position, not necessarily a key
		if s.prefix != "" {
			k = s.prefix + "/" + after
		}
		q.StartOffset = k + "\x00" // StartOffset is inclusive; the next name after k
	}
	if err := q.SetAttrSelection([]string{"Name", "Size", "Updated", "Retention"}); err != nil {
		return err
	}
	it := s.bucket.Objects(ctx, q)
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return nil
		}
		if err != nil {
			return s.wrap("list", prefix, err)
		}
		k := a.Name
		if after != "" && k <= q.StartOffset[:len(q.StartOffset)-1] {
			continue // an emulator that ignores StartOffset
		}
		if s.prefix != "" {
			k = strings.TrimPrefix(k, s.prefix+"/")
		}
		if err := fn(backup.ObjectInfo{Key: k, Size: a.Size, Modified: a.Updated, Retention: retentionOf(a.Retention)}); err != nil {
			return err
		}
	}
}

// Delete implements backup.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if err := s.bucket.Object(k).Delete(ctx); err != nil && !errors.Is(err, storage.ErrObjectNotExist) {
		return s.wrap("delete", key, err)
	}
	return nil
}
