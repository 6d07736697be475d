package gcs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
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

// TestPermissions_MatchCalls records every GCS API call the conformance
// suite makes and checks RequiredPermissions is exactly their permissions.
func TestPermissions_MatchCalls(t *testing.T) {
	bucket := newBucket(t)
	var mu sync.Mutex
	seen := map[string]bool{}
	hc := &http.Client{Transport: rtFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		seen[permissionOf(r)] = true
		mu.Unlock()
		return http.DefaultTransport.RoundTrip(r)
	})}
	n := 0
	storetest.Run(t, func(t *testing.T) backup.Store {
		n++
		s, err := New(context.Background(), bucket, fmt.Sprintf("perm/%d", n), Options{HTTPClient: hc, ChunkSize: 8 << 20})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
	var got []string
	for p := range seen {
		got = append(got, p)
	}
	slices.Sort(got)
	if !slices.Equal(got, RequiredPermissions) {
		t.Fatalf("calls need %v, RequiredPermissions says %v", got, RequiredPermissions)
	}
}

// permissionOf maps a JSON/XML API request to the IAM permission it needs.
func permissionOf(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/upload/"):
		return "storage.objects.create"
	case r.Method == http.MethodDelete:
		return "storage.objects.delete"
	case strings.Contains(p, "/o/") || (r.Method == http.MethodGet && !strings.HasPrefix(p, "/storage/v1/")):
		return "storage.objects.get"
	case strings.HasSuffix(p, "/o"):
		return "storage.objects.list"
	case strings.HasPrefix(p, "/storage/v1/b/") && r.Method == http.MethodGet:
		return "storage.buckets.get"
	}
	return r.Method + " " + p
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// fake-gcs-server stores and reports object retentions (it does not
// enforce them on deletes and overwrites, and refuses to change a Locked
// one at all, so the suite runs Unlocked, GOVERNANCE locks).
func TestRetainerConformance(t *testing.T) {
	bucket := newBucket(t)
	n := 0
	storetest.RunRetainer(t, backup.LockGovernance, func(t *testing.T) backup.Store {
		n++
		s, err := New(context.Background(), bucket, fmt.Sprintf("retainer/%d", n), Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
