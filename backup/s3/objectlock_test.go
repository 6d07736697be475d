package s3

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/storetest"
	"github.com/flowkeep/flowkeep/internal/testserver"
)

// lockServer is a versitygw that keeps versions, which Object Lock needs
// (started by the first test that needs it; TestMain stops it).
var (
	lockServer     *testserver.Server
	lockServerErr  error
	lockServerOnce sync.Once
)

// newLockBucket makes a bucket with Object Lock enabled.
func newLockBucket(t *testing.T) (string, Options) {
	t.Helper()
	lockServerOnce.Do(func() { lockServer, lockServerErr = testserver.StartVersityVersioned() })
	if lockServerErr != nil {
		testserver.Missing(t, lockServerErr)
	}
	name := testserver.NewName("fk-lock")
	if err := lockServer.CreateS3LockBucket(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return name, Options{Endpoint: lockServer.S3Endpoint(), PathStyle: true, Region: testserver.S3Region}
}

func TestRetainerConformance(t *testing.T) {
	bucket, o := newLockBucket(t)
	n := 0
	storetest.RunRetainer(t, backup.LockCompliance, func(t *testing.T) backup.Store {
		n++
		s, err := New(context.Background(), bucket, fmt.Sprintf("suite/%d", n), o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// A plain DELETE in a versioned, object-locked bucket succeeds: it stacks
// a delete marker on the locked version, which a GET then no longer
// finds; deleting the version itself is refused, and so is an overwrite of
// it, which stacks a newer version instead. Undelete makes the locked
// version current again in both cases, and leaves alone what nothing hid.
func TestObjectLock_UndeleteUndoesADeleteAndAnOverwrite(t *testing.T) {
	ctx := context.Background()
	bucket, o := newLockBucket(t)
	s, err := New(ctx, bucket, "flows/wc", o)
	if err != nil {
		t.Fatal(err)
	}
	lock := backup.Retention{Mode: backup.LockCompliance, Until: timeIn(10)}
	for _, k := range []string{"chunks/aa/deleted", "chunks/bb/overwritten", "manifests/untouched"} {
		if err := s.PutRetained(ctx, k, []byte("genuine "+k), lock); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "chunks/aa/deleted"); err != nil {
		t.Fatalf("a plain delete in a versioned bucket: %v", err)
	}
	if _, err := s.Get(ctx, "chunks/aa/deleted"); !errors.Is(err, backup.ErrNotFound) {
		t.Fatalf("after a delete marker: %v, want not found", err)
	}
	// Deleting every version, as a wiper with full rights would.
	raw, err := lockServer.S3Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := raw.ListObjectVersions(ctx, &s3.ListObjectVersionsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	refused := 0
	for _, v := range vs.Versions {
		_, err := raw.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: v.Key, VersionId: v.VersionId})
		if err != nil {
			if !errors.Is(s.wrap("delete", "", err), backup.ErrObjectLocked) {
				t.Fatalf("deleting version %s of %s: %v, want refused by the lock", aws.ToString(v.VersionId), aws.ToString(v.Key), err)
			}
			refused++
		}
	}
	if refused != 3 {
		t.Fatalf("%d locked versions refused deletion, want 3", refused)
	}
	if err := s.Put(ctx, "chunks/bb/overwritten", []byte("garbage")); err != nil {
		t.Fatalf("an overwrite in a versioned bucket: %v", err)
	}
	var got []string
	n, err := s.Undelete(ctx, "", func(k string) { got = append(got, k) })
	if err != nil || n != 2 || len(got) != 2 || got[0] != "chunks/aa/deleted" || got[1] != "chunks/bb/overwritten" {
		t.Fatalf("undelete: %d %v, %v", n, got, err)
	}
	for _, k := range []string{"chunks/aa/deleted", "chunks/bb/overwritten", "manifests/untouched"} {
		b, err := backup.ReadAll(ctx, s, k, 100)
		if err != nil || string(b) != "genuine "+k {
			t.Fatalf("%s after undelete: %q, %v", k, b, err)
		}
		if oi, err := s.Stat(ctx, k); err != nil || oi.Retention.Until.Before(lock.Until) {
			t.Fatalf("%s after undelete is locked %+v, %v; want its lock kept", k, oi.Retention, err)
		}
	}
	if n, err := s.Undelete(ctx, "", nil); n != 0 || err != nil {
		t.Fatalf("a second undelete: %d, %v", n, err)
	}
}

// A locked write to a bucket created without Object Lock says so.
func TestObjectLock_ABucketWithoutObjectLockIsNamed(t *testing.T) {
	ctx := context.Background()
	_, o := newLockBucket(t) // the server; now a bucket without lock on it
	name := testserver.NewName("fk-nolock")
	if err := lockServer.CreateS3Bucket(ctx, name); err != nil {
		t.Fatal(err)
	}
	s, err := New(ctx, name, "", o)
	if err != nil {
		t.Fatal(err)
	}
	err = s.PutRetained(ctx, "chunks/x", []byte("x"), backup.Retention{Mode: backup.LockGovernance, Until: timeIn(5)})
	if !errors.Is(err, backup.ErrNoObjectLock) {
		t.Fatalf("err = %v, want ErrNoObjectLock", err)
	}
}

func timeIn(minutes int) time.Time { return time.Now().Add(time.Duration(minutes) * time.Minute).UTC() }
