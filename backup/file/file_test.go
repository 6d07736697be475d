package file

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) backup.Store {
		s, err := New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestNew_MissingDirectory(t *testing.T) {
	_, err := New(filepath.Join(t.TempDir(), "nope"))
	if !errors.Is(err, backup.ErrNoBucket) {
		t.Fatalf("err = %v", err)
	}
}

// Temporary files a killed writer left are invisible to List and removed by
// prune once older than the grace period; a live writer's young one stays.
func TestSweepTemp_RemovesOnlyStaleTemporaryFiles(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "chunks/ab/abc", []byte("x")); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(root, "chunks", "ab", tmpMarker+"dead")
	young := filepath.Join(root, "chunks", "ab", tmpMarker+"live")
	os.WriteFile(stale, []byte("half"), 0o644)
	os.WriteFile(young, []byte("half"), 0o644)
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(stale, old, old)
	var keys []string
	s.List(ctx, "", "", func(o backup.ObjectInfo) error { keys = append(keys, o.Key); return nil })
	if len(keys) != 1 || keys[0] != "chunks/ab/abc" {
		t.Fatalf("listed %v", keys)
	}
	res, err := backup.Prune(ctx, backup.WithRetry(s, backup.RetryPolicy{}), backup.PruneOptions{KeepLast: 1, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if res.SweptTemp != 1 {
		t.Fatalf("swept %d", res.SweptTemp)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale temp file: %v", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Fatalf("young temp file: %v", err)
	}
}
