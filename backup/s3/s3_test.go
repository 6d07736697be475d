package s3

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
	server, serverErr = testserver.StartVersity()
	if server != nil {
		server.SetS3Env()
	}
	code := m.Run()
	server.Stop()
	lockServer.Stop()
	os.Exit(code)
}

func opts() Options {
	return Options{Endpoint: server.S3Endpoint(), PathStyle: true, Region: testserver.S3Region}
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

// An unknown access key is an access error, not a missing bucket (the
// server may answer the bucket check with a bare 404); no credentials at
// all say so in words, not in the SDK's chain.
func TestNew_UnknownKeyAndMissingCredentials(t *testing.T) {
	bucket := newBucket(t)
	t.Run("unknown access key", func(t *testing.T) {
		t.Setenv("AWS_ACCESS_KEY_ID", "nobody-knows-me")
		_, err := New(context.Background(), bucket, "", opts())
		if !errors.Is(err, backup.ErrAccess) || errors.Is(err, backup.ErrNoBucket) {
			t.Fatalf("err = %v, want an access error", err)
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"} {
			t.Setenv(v, "")
			os.Unsetenv(v)
		}
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
		t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		_, err := New(context.Background(), bucket, "", opts())
		if !errors.Is(err, backup.ErrAccess) || !strings.Contains(err.Error(), "no AWS credentials were found") || strings.Contains(err.Error(), "IMDS") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestNew_UnknownSSE(t *testing.T) {
	if _, err := New(context.Background(), "b", "", Options{SSE: "rot13"}); err == nil || !strings.Contains(err.Error(), "unknown server-side encryption") {
		t.Fatal("accepted")
	}
}

// TestActions_MatchCalls records every S3 operation the conformance suite
// and a large object's upload make, and checks RequiredActions is exactly
// their IAM actions (so the Terraform policy is neither short nor
// generous).
func TestActions_MatchCalls(t *testing.T) {
	bucket := newBucket(t)
	t.Setenv("AWS_CA_BUNDLE", "") // a custom HTTP client cannot take the CA bundle; plain HTTP here
	var mu sync.Mutex
	seen := map[string]bool{}
	o := opts()
	o.HTTPClient = &http.Client{Transport: recordOps(http.DefaultTransport, func(op string) { mu.Lock(); seen[op] = true; mu.Unlock() })}
	n := 0
	storetest.Run(t, func(t *testing.T) backup.Store {
		n++
		s, err := New(context.Background(), bucket, fmt.Sprintf("actions/%d", n), o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
	// The largest object a manifest may name still goes in one request.
	s, err := New(context.Background(), bucket, "actions/big", o)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, backup.MaxChunkBytes+backup.MaxChunkBytes/8)
	if err := s.Put(context.Background(), "big", big); err != nil {
		t.Fatal(err)
	}
	if oi, err := s.Stat(context.Background(), "big"); err != nil || oi.Size != int64(len(big)) {
		t.Fatalf("big object: %+v, %v", oi, err)
	}
	var got []string
	for op := range seen {
		a, ok := actionOf[op]
		if !ok {
			t.Fatalf("operation %s has no IAM action in actionOf", op)
		}
		got = append(got, a)
	}
	slices.Sort(got)
	got = slices.Compact(got)
	if !slices.Equal(got, RequiredActions) {
		t.Fatalf("calls need %v, RequiredActions says %v", got, RequiredActions)
	}
}

// recordOps reports each request's S3 operation, from method and query.
func recordOps(rt http.RoundTripper, fn func(string)) http.RoundTripper {
	return rtFunc(func(r *http.Request) (*http.Response, error) {
		q := r.URL.Query()
		path := strings.Trim(r.URL.Path, "/")
		objectLevel := strings.Contains(path, "/")
		switch {
		case r.Method == http.MethodHead && !objectLevel:
			fn("HeadBucket")
		case r.Method == http.MethodHead:
			fn("HeadObject")
		case r.Method == http.MethodGet && q.Has("list-type"):
			fn("ListObjectsV2")
		case r.Method == http.MethodGet:
			fn("GetObject")
		case r.Method == http.MethodPost && q.Has("uploads"):
			fn("CreateMultipartUpload")
		case r.Method == http.MethodPut && q.Has("partNumber"):
			fn("UploadPart")
		case r.Method == http.MethodPost && q.Has("uploadId"):
			fn("CompleteMultipartUpload")
		case r.Method == http.MethodDelete && q.Has("uploadId"):
			fn("AbortMultipartUpload")
		case r.Method == http.MethodPut:
			fn("PutObject")
		case r.Method == http.MethodDelete:
			fn("DeleteObject")
		default:
			fn(r.Method + " " + r.URL.RawQuery)
		}
		return rt.RoundTrip(r)
	})
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A Put told the body's sha256 (backup.WithPayloadSHA256) signs with it
// instead of hashing the body again; the server checks it, so a wrong one
// fails the write and stores nothing.
func TestPut_PayloadSHA256IsCheckedByTheServer(t *testing.T) {
	ctx := context.Background()
	s, err := New(ctx, newBucket(t), "p", opts())
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("chunk bytes")
	if err := s.Put(backup.WithPayloadSHA256(ctx, backup.SumHex(body)), "right", body); err != nil {
		t.Fatalf("a put with its sha256: %v", err)
	}
	if oi, err := s.Stat(ctx, "right"); err != nil || oi.Size != int64(len(body)) {
		t.Fatalf("the object put with its sha256: %+v, %v", oi, err)
	}
	if err := s.Put(backup.WithPayloadSHA256(ctx, backup.SumHex([]byte("other bytes"))), "wrong", body); err == nil {
		t.Fatal("a put signed with another body's sha256 succeeded")
	}
	if _, err := s.Stat(ctx, "wrong"); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("the refused put stored something: %v", err)
	}
}
