package s3

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/flowkeep/flowkeep/backup"
)

// S3 Object Lock. The bucket must have been created with Object Lock
// enabled (which turns versioning on for good). Objects are written with
// their lock in the PutObject itself (x-amz-object-lock-mode and
// -retain-until-date, with the Content-MD5 S3 requires for them), locks
// are extended with PutObjectRetention and read from HeadObject (which
// reports them only to a caller allowed s3:GetObjectRetention; without it
// every reused chunk's lock is extended on every backup).
//
// In a versioned bucket a DeleteObject without a version id always
// succeeds, locked object or not: it stacks a delete marker on the locked
// version, which is still there (and cannot be deleted before its lock
// ends), but a GET no longer finds it. Undelete makes such versions
// current again.

var _ backup.Retainer = (*Store)(nil)

// ObjectLockActions are the IAM actions the agent needs on top of
// RequiredActions with --object-lock: writing locked objects and extending
// locks (s3:PutObjectRetention), and reading them back from HEAD
// (s3:GetObjectRetention). With them, the agent's identity needs
// s3:DeleteObject only on its locks/ and quarantine/ objects.
var ObjectLockActions = []string{
	"s3:GetObjectRetention",
	"s3:PutObjectRetention",
}

// UndeleteActions are what flowbackup undelete needs on top of
// RequiredActions: listing versions, deleting delete markers, reading a
// version (its HEAD and lock, the copy's source) and writing the copy
// locked. s3:DeleteObjectVersion cannot delete a locked version (Object
// Lock refuses it), but it can delete unlocked ones: grant it to the
// prune identity only, never to the agent.
var UndeleteActions = []string{
	"s3:DeleteObjectVersion",
	"s3:GetObjectRetention",
	"s3:GetObjectVersion",
	"s3:GetObjectVersionRetention",
	"s3:ListBucketVersions",
	"s3:PutObjectRetention",
}

// PutRetained implements backup.Retainer: one PutObject with If-None-Match
// and the lock.
func (s *Store) PutRetained(ctx context.Context, key string, data []byte, r backup.Retention) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	sum := md5.Sum(data)
	in := &s3.PutObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(k), Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))), IfNoneMatch: aws.String("*"),
		ContentMD5:                aws.String(base64.StdEncoding.EncodeToString(sum[:])),
		ObjectLockMode:            types.ObjectLockMode(r.Mode),
		ObjectLockRetainUntilDate: aws.Time(ceilSecond(r.Until))}
	s.sse(in)
	if _, err := s.client.PutObject(ctx, in); err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// SetRetention implements backup.Retainer with PutObjectRetention on the
// current version.
func (s *Store) SetRetention(ctx context.Context, key string, r backup.Retention) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	_, err = s.client.PutObjectRetention(ctx, &s3.PutObjectRetentionInput{Bucket: aws.String(s.bucket), Key: aws.String(k),
		Retention: &types.ObjectLockRetention{Mode: types.ObjectLockRetentionMode(r.Mode), RetainUntilDate: aws.Time(ceilSecond(r.Until))}})
	if err != nil {
		return s.wrap("lock", key, err)
	}
	return nil
}

// retentionOf is a HEAD's lock.
func retentionOf(mode types.ObjectLockMode, until *time.Time) backup.Retention {
	if until == nil {
		return backup.Retention{}
	}
	return backup.Retention{Mode: backup.LockMode(mode), Until: *until}
}

// version is one entry of a key's version list: a version or a delete
// marker.
type version struct {
	id     string
	marker bool
	latest bool
	when   time.Time
	etag   string
}

// Undelete implements backup.Retainer. It lists every version under
// prefix; for each key hidden by a delete marker or a newer version, it
// makes the oldest version still under lock current again by copying it
// onto the key with its lock. In a key space where an object is written
// once (chunks are named by their content, manifests and registry events
// are unique), the oldest locked version is the one flowkeep wrote: a
// newer one, locked or not, is someone else's.
func (s *Store) Undelete(ctx context.Context, prefix string, fn func(string)) (int, error) {
	full := prefix
	if s.prefix != "" {
		full = s.prefix + "/" + prefix
	}
	n := 0
	var cur string
	var vs []version
	flush := func() error {
		if cur == "" {
			return nil
		}
		done, err := s.undeleteKey(ctx, cur, vs)
		if done {
			n++
			if fn != nil {
				fn(strings.TrimPrefix(cur, s.prefix+"/"))
			}
		}
		return err
	}
	p := s3.NewListObjectVersionsPaginator(s.client, &s3.ListObjectVersionsInput{Bucket: aws.String(s.bucket), Prefix: aws.String(full)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return n, s.wrap("list versions", prefix, err)
		}
		type entry struct {
			key string
			version
		}
		var es []entry
		for _, v := range page.Versions {
			es = append(es, entry{aws.ToString(v.Key), version{aws.ToString(v.VersionId), false, aws.ToBool(v.IsLatest), aws.ToTime(v.LastModified), strings.Trim(aws.ToString(v.ETag), `"`)}})
		}
		for _, m := range page.DeleteMarkers {
			es = append(es, entry{aws.ToString(m.Key), version{aws.ToString(m.VersionId), true, aws.ToBool(m.IsLatest), aws.ToTime(m.LastModified), ""}})
		}
		// A key's entries are contiguous across pages; within one, newest
		// first (a marker and a version of one second: the latest first).
		sort.SliceStable(es, func(i, j int) bool {
			if es[i].key != es[j].key {
				return es[i].key < es[j].key
			}
			if es[i].latest != es[j].latest {
				return es[i].latest
			}
			return es[i].when.After(es[j].when)
		})
		for _, e := range es {
			if e.key != cur {
				if err := flush(); err != nil {
					return n, err
				}
				cur, vs = e.key, nil
			}
			vs = append(vs, e.version)
		}
	}
	return n, flush()
}

// undeleteKey makes the oldest locked version of key current (vs newest
// first), if another entry hides it; done says it did: by deleting the
// delete markers stacked on it when it is the newest version, else by
// copying it over the newer ones. A key with nothing locked is left as it
// is (what prune deleted once its lock had ended stays deleted).
func (s *Store) undeleteKey(ctx context.Context, key string, vs []version) (bool, error) {
	if len(vs) == 1 && !vs[0].marker {
		return false, nil // one version, current: nothing hides anything
	}
	top := 0
	for top < len(vs) && vs[top].marker {
		top++
	}
	now := time.Now()
	for i := len(vs) - 1; i >= top; i-- {
		v := vs[i]
		if v.marker {
			continue
		}
		r, err := s.versionRetention(ctx, key, v.id)
		if err != nil {
			return false, err
		}
		if !r.Holds(now) {
			continue
		}
		if i == top {
			for _, m := range vs[:top] {
				if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key), VersionId: aws.String(m.id)}); err != nil {
					return false, s.wrap("delete the delete marker of", key, err)
				}
			}
			return top > 0, nil
		}
		if top == 0 && v.etag != "" && vs[0].etag == v.etag {
			return false, nil // the current version is a copy of it (an earlier undelete)
		}
		src := s.bucket + "/" + strings.ReplaceAll(url.PathEscape(key), "%2F", "/") + "?versionId=" + url.QueryEscape(v.id)
		in := &s3.CopyObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key), CopySource: aws.String(src),
			ObjectLockMode: types.ObjectLockMode(r.Mode), ObjectLockRetainUntilDate: aws.Time(r.Until)}
		switch s.opts.SSE {
		case "AES256":
			in.ServerSideEncryption = types.ServerSideEncryptionAes256
		case "aws:kms":
			in.ServerSideEncryption = types.ServerSideEncryptionAwsKms
			if s.opts.KMSKeyID != "" {
				in.SSEKMSKeyId = aws.String(s.opts.KMSKeyID)
			}
		}
		if _, err := s.client.CopyObject(ctx, in); err != nil {
			return false, s.wrap("undelete", key, err)
		}
		return true, nil
	}
	return false, nil
}

// versionRetention reads one version's lock with GetObjectRetention (a
// HEAD of a version is not always answered with its lock: versitygw's is
// not, for versions that are not current).
func (s *Store) versionRetention(ctx context.Context, key, id string) (backup.Retention, error) {
	out, err := s.client.GetObjectRetention(ctx, &s3.GetObjectRetentionInput{Bucket: aws.String(s.bucket), Key: aws.String(key), VersionId: aws.String(id)})
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "NoSuchObjectLockConfiguration" {
		return backup.Retention{}, nil
	}
	if err != nil {
		return backup.Retention{}, s.wrap("read the lock of a version of", key, err)
	}
	if out.Retention == nil {
		return backup.Retention{}, nil
	}
	return retentionOf(types.ObjectLockMode(out.Retention.Mode), out.Retention.RetainUntilDate), nil
}

// lockError maps S3's object lock answers: a write with a lock to a bucket
// without Object Lock, and a delete or overwrite refused by a lock.
func lockError(what string, err error) error {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return nil
	}
	msg := strings.ToLower(ae.ErrorMessage())
	switch {
	case ae.ErrorCode() == "InvalidRequest" && strings.Contains(strings.ReplaceAll(msg, " ", ""), "objectlockconfiguration"):
		return fmt.Errorf("s3: %s: %w: the bucket was not created with Object Lock enabled (%s)", what, backup.ErrNoObjectLock, ae.ErrorMessage())
	case ae.ErrorCode() == "AccessDenied" && strings.Contains(msg, "object lock"):
		return fmt.Errorf("s3: %s: %w (%s)", what, backup.ErrObjectLocked, ae.ErrorMessage())
	}
	return nil
}

// ceilSecond is t rounded up to a whole second: servers keep locks to the
// second, and a lock must never end before the time asked for.
func ceilSecond(t time.Time) time.Time {
	t = t.UTC()
	if c := t.Truncate(time.Second); !c.Equal(t) {
		return c.Add(time.Second)
	}
	return t
}
