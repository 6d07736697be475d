package s3

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
	server, serverErr = testserver.StartVersity()
	if server != nil {
		server.SetS3Env()
	}
	code := m.Run()
	server.Stop()
	os.Exit(code)
}

func opts() Options {
	return Options{Endpoint: server.S3Endpoint(), PathStyle: true, Region: testserver.S3Region, PartSize: 8 << 20}
}

func newBucket(t *testing.T) string {
	t.Helper()
	if serverErr != nil {
		testserver.Missing(t, serverErr)
	}
	name := testserver.NewName("fk")
	if err := server.CreateS3Bucket(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestConformance(t *testing.T) {
	bucket := newBucket(t)
	n := 0
	storetest.Run(t, func(t *testing.T) backup.Store {
		n++
		s, err := New(context.Background(), bucket, fmt.Sprintf("suite/%d", n), opts())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestNew_MissingBucket(t *testing.T) {
	newBucket(t)
	_, err := New(context.Background(), "no-such-bucket-flowkeep", "", opts())
	if !errors.Is(err, backup.ErrNoBucket) {
		t.Fatalf("err = %v", err)
	}
}

func TestNew_BadCredentials(t *testing.T) {
	bucket := newBucket(t)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	_, err := New(context.Background(), bucket, "", opts())
	if !errors.Is(err, backup.ErrAccess) {
		t.Fatalf("err = %v", err)
	}
}

func TestNew_UnknownSSE(t *testing.T) {
	o := opts()
	o.SSE = "rot13"
	if _, err := New(context.Background(), "b", "", o); err == nil {
		t.Fatal("accepted")
	}
}
