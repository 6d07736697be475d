package file

import (
	"errors"
	"path/filepath"
	"testing"

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
