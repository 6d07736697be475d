package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// RunRetainer runs the object lock part of the suite, the contract in
// backup.Retainer's doc comment, with locks of mode (a few minutes long:
// the objects stay behind). open returns an empty store, in a bucket that
// can lock objects, for each subtest; it must be a backup.Retainer.
func RunRetainer(t *testing.T, mode backup.LockMode, open func(t *testing.T) backup.Store) {
	ctx := context.Background()
	retainer := func(t *testing.T) (backup.Store, backup.Retainer) {
		t.Helper()
		s := open(t)
		r := backup.RetainerOf(s)
		if r == nil {
			t.Fatalf("%s is not a backup.Retainer", s)
		}
		return s, r
	}
	lockOf := func(t *testing.T, s backup.Store, key string) backup.Retention {
		t.Helper()
		oi, err := s.Stat(ctx, key)
		if err != nil {
			t.Fatalf("stat %s: %v", key, err)
		}
		return oi.Retention
	}
	until := time.Now().Add(5 * time.Minute).UTC()
	t.Run("PutRetainedWritesLockedOnce", func(t *testing.T) {
		s, r := retainer(t)
		if err := r.PutRetained(ctx, "chunks/ab/x", []byte("locked"), backup.Retention{Mode: mode, Until: until}); err != nil {
			t.Fatal(err)
		}
		got := lockOf(t, s, "chunks/ab/x")
		if got.Mode != mode || got.Until.Before(until) || got.Until.After(until.Add(2*time.Second)) {
			t.Fatalf("lock %+v, want %s until %s", got, mode, until)
		}
		b, err := backup.ReadAll(ctx, s, "chunks/ab/x", 100)
		if err != nil || string(b) != "locked" {
			t.Fatalf("read %q, %v", b, err)
		}
		err = r.PutRetained(ctx, "chunks/ab/x", []byte("other"), backup.Retention{Mode: mode, Until: until})
		if !errors.Is(err, backup.ErrExists) {
			t.Fatalf("second PutRetained: %v, want ErrExists", err)
		}
		if b, _ := backup.ReadAll(ctx, s, "chunks/ab/x", 100); string(b) != "locked" {
			t.Fatalf("the refused write changed the object to %q", b)
		}
	})
	t.Run("SetRetentionLengthens", func(t *testing.T) {
		s, r := retainer(t)
		if err := r.PutRetained(ctx, "m", []byte("x"), backup.Retention{Mode: mode, Until: until}); err != nil {
			t.Fatal(err)
		}
		later := until.Add(time.Hour)
		if err := r.SetRetention(ctx, "m", backup.Retention{Mode: mode, Until: later}); err != nil {
			t.Fatal(err)
		}
		if got := lockOf(t, s, "m"); got.Until.Before(later) {
			t.Fatalf("lock %+v after lengthening to %s", got, later)
		}
		if err := r.SetRetention(ctx, "missing", backup.Retention{Mode: mode, Until: later}); !errors.Is(err, backup.ErrNotFound) {
			t.Fatalf("locking a missing object: %v, want ErrNotFound", err)
		}
	})
	t.Run("UnlockedObjectsHaveNoRetention", func(t *testing.T) {
		s, _ := retainer(t)
		if err := s.Put(ctx, "plain", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if got := lockOf(t, s, "plain"); got.Holds(time.Now()) {
			t.Fatalf("a plain Put is locked: %+v", got)
		}
		if err := s.Delete(ctx, "plain"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("UndeleteOfNothingHiddenDoesNothing", func(t *testing.T) {
		s, r := retainer(t)
		if err := r.PutRetained(ctx, "chunks/cd/y", []byte("y"), backup.Retention{Mode: mode, Until: until}); err != nil {
			t.Fatal(err)
		}
		s.Put(ctx, "latest/p.json", []byte("1"))
		s.Put(ctx, "latest/p.json", []byte("2"))
		n, err := r.Undelete(ctx, "", func(k string) { t.Errorf("undeleted %s", k) })
		if err != nil || n != 0 {
			t.Fatalf("undelete: %d, %v", n, err)
		}
	})
}
