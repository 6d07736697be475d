// Package storeurl opens a backup.Store from a destination URL:
// file:///path, s3://bucket/prefix or gs://bucket/prefix.
package storeurl

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/file"
	"github.com/flowkeep/flowkeep/backup/gcs"
	"github.com/flowkeep/flowkeep/backup/s3"
)

// Options carry backend settings that do not fit in a URL.
type Options struct {
	S3  s3.Options
	GCS gcs.Options
	// Create makes a missing file:// directory (for a backup destination;
	// buckets are never created).
	Create bool
	// Retry is the policy for opening the store (its first request checks
	// the bucket, and may meet a transient 503 like any other).
	Retry backup.RetryPolicy
}

// Schemes lists the URL forms, for messages.
const Schemes = "file:///path, s3://bucket/prefix or gs://bucket/prefix"

// Open opens the store a URL names and checks that it is reachable.
func Open(ctx context.Context, raw string, o Options) (backup.Store, error) {
	u, prefix, err := parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "file" {
		if o.Create {
			return file.Create(prefix)
		}
		return file.New(prefix)
	}
	var st backup.Store
	err = backup.Retry(ctx, o.Retry, "open "+raw, func() error {
		var err error
		if u.Scheme == "s3" {
			st, err = s3.New(ctx, u.Host, prefix, o.S3)
		} else {
			st, err = gcs.New(ctx, u.Host, prefix, o.GCS)
		}
		return err
	})
	return st, err
}

// Check says whether raw is a URL Open understands (nil) or why not,
// without opening anything: a reader of several locations tells a
// mistyped one from one that is down.
func Check(raw string) error {
	_, _, err := parse(raw)
	return err
}

// parse checks a storage URL: for file://, the directory (cleaned); for
// s3:// and gs://, the bucket is u.Host and the prefix the key prefix.
func parse(raw string) (*url.URL, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", fmt.Errorf("bad storage URL %q: %v (use %s)", raw, err, Schemes)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, "", fmt.Errorf("bad storage URL %q: a file URL has no host; write file:///absolute/path", raw)
		}
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return nil, "", fmt.Errorf("bad storage URL %q: write file:///absolute/path", raw)
		}
		return u, filepath.Clean(u.Path), nil
	case "s3", "gs":
		if u.Host == "" {
			return nil, "", fmt.Errorf("bad storage URL %q: name the bucket, e.g. %s://my-bucket/prefix", raw, u.Scheme)
		}
		prefix := strings.Trim(u.Path, "/")
		if err := checkPrefix(prefix); err != nil {
			return nil, "", fmt.Errorf("bad storage URL %q: %w", raw, err)
		}
		return u, prefix, nil
	case "":
		return nil, "", fmt.Errorf("bad storage URL %q: no scheme (use %s)", raw, Schemes)
	}
	return nil, "", fmt.Errorf("unknown storage scheme %q in %q: use %s", u.Scheme, raw, Schemes)
}

func checkPrefix(p string) error {
	if p == "" {
		return nil
	}
	return backup.CheckKey(p)
}
