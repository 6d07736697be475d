package storeurl_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/s3"
	"github.com/flowkeep/flowkeep/backup/storeurl"
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

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A bucket that answers its first requests with 503 opens after retries,
// as any other call would: not exit 3 after the SDK's own attempts.
func TestOpen_RetriesTransientFailures(t *testing.T) {
	if serverErr != nil {
		testserver.Missing(t, serverErr)
	}
	t.Setenv("AWS_CA_BUNDLE", "")
	bucket := testserver.NewName("fk")
	if err := server.CreateS3Bucket(context.Background(), bucket); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		fail   int64 // HEAD requests answered 503
		opens  bool
		access bool
	}{
		{fail: 5, opens: true},
		{fail: 1000, opens: false},
	} {
		var heads atomic.Int64
		client := &http.Client{Transport: rtFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodHead && heads.Add(1) <= tc.fail {
				return &http.Response{StatusCode: 503, Status: "503 Slow Down", Header: http.Header{}, Body: http.NoBody, Request: r}, nil
			}
			return http.DefaultTransport.RoundTrip(r)
		})}
		o := storeurl.Options{S3: s3.Options{Endpoint: server.S3Endpoint(), PathStyle: true, Region: testserver.S3Region, HTTPClient: client},
			Retry: backup.RetryPolicy{Attempts: 4, Base: time.Millisecond, Max: 5 * time.Millisecond}}
		st, err := storeurl.Open(context.Background(), "s3://"+bucket+"/x", o)
		if tc.opens {
			if err != nil {
				t.Fatalf("%d 503s: %v", tc.fail, err)
			}
			st.Close()
			continue
		}
		if err == nil || errors.Is(err, backup.ErrAccess) || errors.Is(err, backup.ErrNoBucket) || !strings.Contains(err.Error(), "attempts") {
			t.Fatalf("a bucket that always answers 503: %v", err)
		}
	}
}
