package backup

import (
	"bytes"
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// fuzzStore is the smallest Store for fuzzing: a map, no locks needed.
type fuzzStore struct{ objs map[string][]byte }

func (f *fuzzStore) Put(_ context.Context, k string, b []byte) error {
	f.objs[k] = append([]byte(nil), b...)
	return nil
}
func (f *fuzzStore) PutIfAbsent(ctx context.Context, k string, b []byte) error {
	if _, ok := f.objs[k]; ok {
		return ErrExists
	}
	return f.Put(ctx, k, b)
}
func (f *fuzzStore) PutIfMatch(ctx context.Context, k string, b []byte, v ObjectVersion) (ObjectVersion, error) {
	var cur ObjectVersion
	if old, ok := f.objs[k]; ok {
		cur = "v" + ObjectVersion(old)
	}
	if cur != v {
		return "", ErrConflict
	}
	return "v" + ObjectVersion(b), f.Put(ctx, k, b) // its content is its version
}
func (f *fuzzStore) GetVersion(_ context.Context, k string, limit int64) ([]byte, ObjectVersion, error) {
	b, ok := f.objs[k]
	if !ok {
		return nil, "", ErrNotFound
	}
	if int64(len(b)) > limit {
		return nil, "", &SizeError{Key: k, Limit: limit}
	}
	return bytes.Clone(b), "v" + ObjectVersion(b), nil
}
func (f *fuzzStore) Get(_ context.Context, k string) (io.ReadCloser, error) {
	b, ok := f.objs[k]
	if !ok {
		return nil, ErrNotFound
	}
	return nopCloser{strings.NewReader(string(b))}, nil
}
func (f *fuzzStore) Stat(_ context.Context, k string) (ObjectInfo, error) {
	b, ok := f.objs[k]
	if !ok {
		return ObjectInfo{}, ErrNotFound
	}
	return ObjectInfo{Key: k, Size: int64(len(b)), Modified: time.Now()}, nil
}
func (f *fuzzStore) List(_ context.Context, prefix, after string, fn func(ObjectInfo) error) error {
	for _, k := range sortedKeys(f.objs) {
		if strings.HasPrefix(k, prefix) && k > after {
			if err := fn(ObjectInfo{Key: k, Size: int64(len(f.objs[k]))}); err != nil {
				return err
			}
		}
	}
	return nil
}
func (f *fuzzStore) Delete(_ context.Context, k string) error { delete(f.objs, k); return nil }
func (f *fuzzStore) String() string                           { return "fuzz://" }
func (f *fuzzStore) Close() error                             { return nil }

func FuzzParseManifestKey(f *testing.F) {
	f.Add("manifests/00112233445566778899aabbccddeeff/part-0003/20261124T101010.123Z-0a0b0c0d.json")
	f.Add("manifests/x/part-0001/y.json")
	f.Add("manifests/00112233/part-0001/../../x.json")
	f.Fuzz(func(t *testing.T, key string) {
		r, ok := ParseManifestKey(key)
		if !ok {
			return
		}
		// Whatever is accepted is a safe key, in the canonical form, naming
		// exactly the key it came from.
		if r.Key != key || ManifestKey(r.FlowUID, r.Index, r.ID) != key || CheckKey(key) != nil || r.Index < 0 || r.Index > MaxPartitions {
			t.Fatalf("%q parsed as %+v", key, r)
		}
	})
}

// Catalog loading never panics on what a bucket holds, and never returns a
// manifest that disagrees with its key.
func FuzzLoadCatalog(f *testing.F) {
	ok, _ := validManifest().Marshal()
	f.Add("manifests/00112233445566778899aabbccddeeff/part-0001/20261124T101010.123Z-0a0b0c0d.json", ok)
	f.Add("manifests/a/b", []byte("{}"))
	f.Fuzz(func(t *testing.T, key string, body []byte) {
		if CheckKey(key) != nil {
			return
		}
		s := &fuzzStore{objs: map[string][]byte{key: body}}
		cat, err := LoadCatalog(context.Background(), s, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range cat.Manifests {
			if cat.Keys[m] != ManifestKey(m.Flow.UID, m.Partition.Index, m.ID) {
				t.Fatalf("manifest %s loaded from %s", m.ID, cat.Keys[m])
			}
		}
	})
}

// Whatever lies at a lock key, taking the lock either works or says why;
// it never panics.
func FuzzLockObject(f *testing.F) {
	f.Add([]byte(`{"holder":"a","host":"h","pid":1,"acquired":"2026-01-01T00:00:00Z","expires":"2999-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"holder":""}`))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, body []byte) {
		s := &fuzzStore{objs: map[string][]byte{"locks/x": body}}
		l, err := AcquireLock(context.Background(), s, "locks/x", "me", time.Minute, time.Now)
		if err == nil && l.Check(context.Background()) != nil {
			t.Fatal("acquired a lock that is not ours")
		}
	})
}

// Chunk decoding refuses what is not a zstd frame of at most limit bytes.
func FuzzDecompress(f *testing.F) {
	f.Add(Compress(nil, []byte("hello, chunk")))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0})
	f.Fuzz(func(t *testing.T, z []byte) {
		out, err := Decompress(nil, z, 1<<20)
		if err == nil && len(out) > 1<<20 {
			t.Fatalf("decompressed %d bytes past the limit", len(out))
		}
	})
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }

func sortedKeys(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
