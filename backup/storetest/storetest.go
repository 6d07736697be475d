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
