// Package storetest is the conformance suite every backup.Store backend
// runs: the contract in backup.Store's doc comment, as tests.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/flowkeep/flowkeep/backup"
)

// Run runs the suite. open returns an empty store for each subtest.
func Run(t *testing.T, open func(t *testing.T) backup.Store) {
	ctx := context.Background()
	get := func(t *testing.T, s backup.Store, key string) []byte {
		t.Helper()
		b, err := backup.ReadAll(ctx, s, key, 1<<30)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		return b
	}
	t.Run("PutGetRoundTrip", func(t *testing.T) {
		s := open(t)
		if err := s.Put(ctx, "a/b/c.bin", []byte("hello")); err != nil {
			t.Fatal(err)
		}
		if got := get(t, s, "a/b/c.bin"); string(got) != "hello" {
			t.Fatalf("got %q", got)
		}
		info, err := s.Stat(ctx, "a/b/c.bin")
		if err != nil || info.Size != 5 || info.Key != "a/b/c.bin" || info.Modified.IsZero() {
			t.Fatalf("stat = %+v, %v", info, err)
		}
	})
	t.Run("PutOverwrites", func(t *testing.T) {
		s := open(t)
		s.Put(ctx, "k", []byte("one"))
		if err := s.Put(ctx, "k", []byte("two!")); err != nil {
			t.Fatal(err)
		}
		if got := get(t, s, "k"); string(got) != "two!" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("EmptyObject", func(t *testing.T) {
		s := open(t)
		if err := s.Put(ctx, "empty", nil); err != nil {
			t.Fatal(err)
		}
		if got := get(t, s, "empty"); len(got) != 0 {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("MissingIsErrNotFound", func(t *testing.T) {
		s := open(t)
		if _, err := s.Get(ctx, "nope/x"); !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("get: %v", err)
		}
		if _, err := s.Stat(ctx, "nope/x"); !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("stat: %v", err)
		}
	})
	t.Run("PutIfAbsent", func(t *testing.T) {
		s := open(t)
		if err := s.PutIfAbsent(ctx, "locks/l", []byte("first")); err != nil {
			t.Fatal(err)
		}
		if err := s.PutIfAbsent(ctx, "locks/l", []byte("second")); !errors.Is(err, backup.ErrExists) {
			t.Fatalf("second PutIfAbsent: %v", err)
		}
		if got := get(t, s, "locks/l"); string(got) != "first" {
			t.Fatalf("got %q", got)
		}
		s.Delete(ctx, "locks/l")
		if err := s.PutIfAbsent(ctx, "locks/l", []byte("third")); err != nil {
			t.Fatalf("after delete: %v", err)
		}
	})
	t.Run("PutIfAbsentConcurrentOneWins", func(t *testing.T) {
		s := open(t)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				err := s.PutIfAbsent(ctx, "race", []byte(fmt.Sprint(i)))
				if err == nil {
					wins.Add(1)
				} else if !errors.Is(err, backup.ErrExists) {
					t.Errorf("racer %d: %v", i, err)
				}
			}(i)
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d racers won", wins.Load())
		}
	})
	t.Run("PutIfMatch", func(t *testing.T) {
		s := open(t)
		if _, _, err := s.GetVersion(ctx, "locks/v", 1<<20); !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("get version of a missing object: %v", err)
		}
		if _, err := s.PutIfMatch(ctx, "locks/v", []byte("x"), "no-such-version"); !errors.Is(err, backup.ErrConflict) {
			t.Fatalf("PutIfMatch of a missing object: %v, want ErrConflict", err)
		}
		v1, err := s.PutIfMatch(ctx, "locks/v", []byte("one"), "")
		if err != nil || v1 == "" {
			t.Fatalf("create: %q, %v", v1, err)
		}
		if _, err := s.PutIfMatch(ctx, "locks/v", []byte("again"), ""); !errors.Is(err, backup.ErrConflict) {
			t.Fatalf("create over an object: %v, want ErrConflict", err)
		}
		if err := s.PutIfAbsent(ctx, "locks/v", []byte("absent")); !errors.Is(err, backup.ErrExists) {
			t.Fatalf("PutIfAbsent over a PutIfMatch: %v", err)
		}
		b, v, err := s.GetVersion(ctx, "locks/v", 1<<20)
		if err != nil || string(b) != "one" || v != v1 {
			t.Fatalf("get version = %q %q %v, want %q %q", b, v, err, "one", v1)
		}
		v2, err := s.PutIfMatch(ctx, "locks/v", []byte("two"), v1)
		if err != nil || v2 == "" || v2 == v1 {
			t.Fatalf("swap from %q: %q, %v", v1, v2, err)
		}
		if got := get(t, s, "locks/v"); string(got) != "two" {
			t.Fatalf("after the swap: %q", got)
		}
		if _, err := s.PutIfMatch(ctx, "locks/v", []byte("stale"), v1); !errors.Is(err, backup.ErrConflict) {
			t.Fatalf("swap from a version replaced: %v, want ErrConflict", err)
		}
		if got := get(t, s, "locks/v"); string(got) != "two" {
			t.Fatalf("a failed swap wrote: %q", got)
		}
		// Any write is a new version, a plain Put's too.
		if err := s.Put(ctx, "locks/v", []byte("three")); err != nil {
			t.Fatal(err)
		}
		_, v3, err := s.GetVersion(ctx, "locks/v", 1<<20)
		if err != nil || v3 == v2 {
			t.Fatalf("version after a Put: %q (was %q), %v", v3, v2, err)
		}
		if _, err := s.PutIfMatch(ctx, "locks/v", []byte("stale"), v2); !errors.Is(err, backup.ErrConflict) {
			t.Fatalf("swap from the version a Put replaced: %v, want ErrConflict", err)
		}
		// A deleted object has no version to swap from; it may be created.
		s.Delete(ctx, "locks/v")
		if _, err := s.PutIfMatch(ctx, "locks/v", []byte("gone"), v3); !errors.Is(err, backup.ErrConflict) {
			t.Fatalf("swap from a deleted object: %v, want ErrConflict", err)
		}
		if _, err := s.Stat(ctx, "locks/v"); !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("a failed swap created the object: %v", err)
		}
		v4, err := s.PutIfMatch(ctx, "locks/v", []byte("four"), "")
		if err != nil {
			t.Fatalf("create after delete: %v", err)
		}
		// A PutIfAbsent's object is swapped from the version GetVersion reads.
		if err := s.PutIfAbsent(ctx, "locks/w", []byte("w1")); err != nil {
			t.Fatal(err)
		}
		_, vw, err := s.GetVersion(ctx, "locks/w", 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.PutIfMatch(ctx, "locks/w", []byte("w2"), vw); err != nil {
			t.Fatalf("swap a PutIfAbsent's object: %v", err)
		}
		if _, err := s.PutIfMatch(ctx, "locks/w", []byte("w3"), v4); !errors.Is(err, backup.ErrConflict) {
			t.Fatalf("swap from another object's version: %v, want ErrConflict", err)
		}
		if _, _, err := s.GetVersion(ctx, "locks/w", 1); !errors.Is(err, backup.ErrCorrupt) {
			t.Fatalf("get version beyond the limit: %v, want a size error", err)
		}
		if got := get(t, s, "locks/w"); string(got) != "w2" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("PutIfMatchConcurrentOneWins", func(t *testing.T) {
		s := open(t)
		v0, err := s.PutIfMatch(ctx, "race-cas", []byte("start"), "")
		if err != nil {
			t.Fatal(err)
		}
		for round, from := range []backup.ObjectVersion{v0, ""} {
			if from == "" {
				s.Delete(ctx, "race-cas") // then race to create it
			}
			var wins atomic.Int32
			var wg sync.WaitGroup
			for i := 0; i < 8; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					_, err := s.PutIfMatch(ctx, "race-cas", []byte(fmt.Sprintf("round %d racer %d", round, i)), from)
					if err == nil {
						wins.Add(1)
					} else if !errors.Is(err, backup.ErrConflict) {
						t.Errorf("racer %d: %v", i, err)
					}
				}(i)
			}
			wg.Wait()
			if wins.Load() != 1 {
				t.Fatalf("round %d: %d racers won", round, wins.Load())
			}
		}
	})
	t.Run("ListOrderedByKeyWithPrefix", func(t *testing.T) {
		s := open(t)
		// "m/a-b" sorts before "m/a/c" ('-' < '/'), though a directory
		// walk meets the directory m/a before the file m/a-b.
		// (No key is both an object and a "directory": file-backed stores
		// cannot hold m/a beside m/a/c, and flowkeep's layout never does.)
		keys := []string{"m/b/2", "m/0", "m/b/10", "m/b/1", "n/x", "m/c.json", "ma", "m/a-b", "m/a/c"}
		for _, k := range keys {
			if err := s.Put(ctx, k, []byte(k)); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		err := s.List(ctx, "m/", "", func(o backup.ObjectInfo) error {
			if o.Size != int64(len(o.Key)) {
				t.Errorf("%s: size %d", o.Key, o.Size)
			}
			got = append(got, o.Key)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := "m/0 m/a-b m/a/c m/b/1 m/b/10 m/b/2 m/c.json"
		if fmt.Sprint(got) != "["+want+"]" {
			t.Fatalf("list m/ = %v, want [%s]", got, want)
		}
		got = nil
		s.List(ctx, "m/b/1", "", func(o backup.ObjectInfo) error { got = append(got, o.Key); return nil })
		if fmt.Sprint(got) != "[m/b/1 m/b/10]" {
			t.Fatalf("list m/b/1 = %v", got)
		}
		// after resumes a listing past a key, whether or not it exists.
		for _, tc := range []struct{ after, want string }{
			{"m/a-b", "[m/a/c m/b/1 m/b/10 m/b/2 m/c.json]"},
			{"m/b/1", "[m/b/10 m/b/2 m/c.json]"},
			{"m/b/10a", "[m/b/2 m/c.json]"},
			{"m/b/", "[m/b/1 m/b/10 m/b/2 m/c.json]"},
			{"m/c.json", "[]"},
		} {
			got = []string{}
			if err := s.List(ctx, "m/", tc.after, func(o backup.ObjectInfo) error { got = append(got, o.Key); return nil }); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != tc.want {
				t.Errorf("list m/ after %q = %v, want %s", tc.after, got, tc.want)
			}
		}
		stop := errors.New("stop")
		n := 0
		if err := s.List(ctx, "", "", func(backup.ObjectInfo) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
			t.Fatalf("fn error not returned: %v after %d", err, n)
		}
	})
	t.Run("DeleteIdempotent", func(t *testing.T) {
		s := open(t)
		s.Put(ctx, "d/x", []byte("x"))
		if err := s.Delete(ctx, "d/x"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, "d/x"); !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("after delete: %v", err)
		}
		if err := s.Delete(ctx, "d/x"); err != nil {
			t.Fatalf("second delete: %v", err)
		}
	})
	t.Run("LargeObject", func(t *testing.T) {
		s := open(t)
		big := make([]byte, 21<<20+17) // above the multipart / resumable threshold
		rand.New(rand.NewSource(1)).Read(big)
		if err := s.Put(ctx, "big/obj", big); err != nil {
			t.Fatal(err)
		}
		rc, err := s.Get(ctx, "big/obj")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("large object round trip: %d bytes, %v", len(got), err)
		}
	})
	t.Run("InvalidKeysRefused", func(t *testing.T) {
		s := open(t)
		for _, k := range []string{"", "/abs", "a/../b", "a//b", "./a"} {
			if err := s.Put(ctx, k, []byte("x")); err == nil {
				t.Errorf("key %q accepted", k)
			}
		}
	})
}
