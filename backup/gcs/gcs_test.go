package gcs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/storetest"
	"github.com/flowkeep/flowkeep/internal/testserver"
)

var server *testserver.Server
var serverErr error

func TestMain(m *testing.M) {
	server, serverErr = testserver.StartFakeGCS()
	if server != nil {
		server.SetGCSEnv()
	}
	code := m.Run()
	server.Stop()
	os.Exit(code)
}

func newBucket(t *testing.T) string {
	t.Helper()
	if serverErr != nil {
		testserver.Missing(t, serverErr)
	}
	name := testserver.NewName("fk")
	if err := server.CreateGCSBucket(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestConformance(t *testing.T) {
	bucket := newBucket(t)
	n := 0
	storetest.Run(t, func(t *testing.T) backup.Store {
		n++
		s, err := New(context.Background(), bucket, fmt.Sprintf("suite/%d", n), Options{ChunkSize: 8 << 20})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestNew_MissingBucket(t *testing.T) {
	newBucket(t)
	_, err := New(context.Background(), "no-such-bucket-flowkeep", "", Options{})
	if !errors.Is(err, backup.ErrNoBucket) {
		t.Fatalf("err = %v", err)
	}
}
