// Package s3 is the Amazon S3 (and S3-compatible) backend of backup.Store,
// on aws-sdk-go-v2: the default credential chain, an optional custom
// endpoint with path-style addressing, and server-side encryption options.
// Every object flowkeep writes is at most a chunk's or a manifest's bound
// (tens of MiB), far below S3's 5 GiB limit for one PutObject, so objects
// are written with a single PutObject (no multipart uploads, and no
// s3:AbortMultipartUpload permission).
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	"github.com/aws/smithy-go/middleware"

	"github.com/flowkeep/flowkeep/backup"
)

// Options configure the S3 client. Credentials come from the default chain
// (environment, shared config, instance or task role).
type Options struct {
	// Endpoint overrides the S3 endpoint (e.g. http://127.0.0.1:7070 for an
	// S3-compatible server). Empty uses AWS (or AWS_ENDPOINT_URL_S3).
	Endpoint string
	// Region; empty uses the default chain, then us-east-1.
	Region string
	// PathStyle addresses buckets as endpoint/bucket (needed by most
	// S3-compatible servers).
	PathStyle bool
	// SSE is "" (bucket default), "AES256" or "aws:kms".
	SSE string
	// KMSKeyID is the key for SSE "aws:kms" (empty: the AWS managed key).
	KMSKeyID string
	// HTTPClient, if set, is used for every request (tests inject faults).
	HTTPClient *http.Client
}

// Store is a bucket and key prefix.
type Store struct {
	client *s3.Client
	bucket string
	prefix string
	opts   Options
}

var _ backup.Store = (*Store)(nil)

// New connects to bucket and checks that it exists and is reachable.
func New(ctx context.Context, bucket, prefix string, o Options) (*Store, error) {
	switch o.SSE {
	case "", "AES256", "aws:kms":
	default:
		return nil, fmt.Errorf("s3: unknown server-side encryption %q (use AES256 or aws:kms)", o.SSE)
	}
	// The SDK's own log lines (an IMDS fallback warning printed before our
	// error says what is missing) only confuse: errors say what happened.
	loads := []func(*config.LoadOptions) error{config.WithLogger(logging.Nop{})}
	if o.Region != "" {
		loads = append(loads, config.WithRegion(o.Region))
	}
	if o.HTTPClient != nil {
		loads = append(loads, config.WithHTTPClient(o.HTTPClient))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loads...)
	if err != nil {
		return nil, fmt.Errorf("s3: load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = o.PathStyle
		// We verify every object with our own sha256; CRC trailers only
		// trouble S3-compatible servers.
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	s := &Store{client: client, bucket: bucket, prefix: strings.Trim(prefix, "/"), opts: o}
	if _, err := client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(bucket)}); err != nil {
		// A HEAD answer has no body, so a 404 cannot say whether the bucket
		// is missing or the access key unknown (some servers answer an
		// unknown key so): a listing's error body says which.
		var re interface{ HTTPStatusCode() int }
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
			_, lerr := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), MaxKeys: aws.Int32(1)})
			if lerr == nil {
				return s, nil
			}
			err = lerr
		}
		return nil, s.wrap("open bucket", "", err)
	}
	return s, nil
}

func (s *Store) String() string { return backup.StoreURL("s3", s.bucket, s.prefix) }

// Close implements backup.Store.
func (s *Store) Close() error { return nil }

func (s *Store) key(k string) (string, error) { return backup.PrefixedKey(s.prefix, k) }

// wrap maps S3 errors to backup's sentinel errors with context.
func (s *Store) wrap(op, key string, err error) error {
	what := op
	if key != "" {
		what += " " + key
	}
	// The SDK reports missing credentials as text only (get identity: get
	// credentials: failed to refresh cached credentials, ...).
	var se *v4.SigningError
	if errors.As(err, &se) || strings.Contains(err.Error(), "get credentials: ") || strings.Contains(err.Error(), "failed to refresh cached credentials") {
		return fmt.Errorf("s3: %s: %w: no AWS credentials were found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an instance role or web identity provides them)", what, backup.ErrAccess)
	}
	if lerr := lockError(what, err); lerr != nil {
		return lerr
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound":
			if key == "" {
				return fmt.Errorf("s3: %s: %w: %s", what, backup.ErrNoBucket, s.bucket)
			}
			return fmt.Errorf("s3: %s: %w", what, backup.ErrNotFound)
		case "NoSuchBucket":
			return fmt.Errorf("s3: %s: %w: %s", what, backup.ErrNoBucket, s.bucket)
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "ExpiredToken", "InvalidToken",
			"XAdminUserNotFound": // versitygw: an unknown access key
			return fmt.Errorf("s3: %s: %w (%s): check the credentials and the bucket policy", what, backup.ErrAccess, ae.ErrorCode())
		case "PreconditionFailed", "ConditionalRequestConflict":
			return fmt.Errorf("s3: %s: %w", what, backup.ErrExists)
		}
	}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusNotFound:
			if key == "" {
				return fmt.Errorf("s3: %s: %w: %s", what, backup.ErrNoBucket, s.bucket)
			}
			return fmt.Errorf("s3: %s: %w", what, backup.ErrNotFound)
		case http.StatusForbidden:
			return fmt.Errorf("s3: %s: %w: check the credentials and the bucket policy", what, backup.ErrAccess)
		case http.StatusPreconditionFailed:
			return fmt.Errorf("s3: %s: %w", what, backup.ErrExists)
		}
	}
	return fmt.Errorf("s3: %s: %w", what, err)
}

func (s *Store) sse(in *s3.PutObjectInput) {
	switch s.opts.SSE {
	case "AES256":
		in.ServerSideEncryption = types.ServerSideEncryptionAes256
	case "aws:kms":
		in.ServerSideEncryption = types.ServerSideEncryptionAwsKms
		if s.opts.KMSKeyID != "" {
			in.SSEKMSKeyId = aws.String(s.opts.KMSKeyID)
		}
	}
}

// Put implements backup.Store with one PutObject.
func (s *Store) Put(ctx context.Context, key string, data []byte) error {
	return s.PutPieces(ctx, key, [][]byte{data})
}

// PutPieces implements backup.PiecesPutter with one PutObject whose body
// is the pieces laid end to end.
func (s *Store) PutPieces(ctx context.Context, key string, pieces [][]byte) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	body := backup.NewPieces(pieces)
	in := &s3.PutObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(k), Body: body, ContentLength: aws.Int64(body.Size())}
	s.sse(in)
	if _, err := s.client.PutObject(ctx, in, payloadHash(ctx)...); err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// payloadHash signs a request with the body's sha256 its caller computed
// (backup.WithPayloadSHA256), so that the SDK does not hash the body again
// (a fifth of the hashing of a first backup). The server checks it.
func payloadHash(ctx context.Context) []func(*s3.Options) {
	sum := backup.PayloadSHA256(ctx)
	if sum == "" {
		return nil
	}
	return []func(*s3.Options){func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Finalize.Insert(middleware.FinalizeMiddlewareFunc("flowkeepPayloadSHA256",
				func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
					return next.HandleFinalize(v4.SetPayloadHash(ctx, sum), in)
				}), "ComputePayloadHash", middleware.Before)
		})
	}}
}

// PutIfAbsent implements backup.Store with If-None-Match: *.
func (s *Store) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	in := &s3.PutObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(k), Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))), IfNoneMatch: aws.String("*")}
	s.sse(in)
	if _, err := s.client.PutObject(ctx, in); err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// PutIfMatch implements backup.Store with If-Match on the ETag (or
// If-None-Match: * for the zero version). The SDK does not retry it: a
// retry of a write whose answer was lost would meet its own write as a
// conflict; the retry decorator retries it and tells the two apart.
func (s *Store) PutIfMatch(ctx context.Context, key string, data []byte, v backup.ObjectVersion) (backup.ObjectVersion, error) {
	k, err := s.key(key)
	if err != nil {
		return "", err
	}
	in := &s3.PutObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(k), Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data)))}
	if v == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(`"` + string(v) + `"`)
	}
	s.sse(in)
	out, err := s.client.PutObject(ctx, in, func(o *s3.Options) { o.RetryMaxAttempts = 1 })
	if err != nil {
		err = s.wrap("put", key, err)
		// 412, or 404 for If-Match on a missing object, or 409 for a
		// concurrent conditional write.
		if errors.Is(err, backup.ErrExists) || errors.Is(err, backup.ErrNotFound) {
			return "", fmt.Errorf("s3: put %s: %w", key, backup.ErrConflict)
		}
		return "", err
	}
	return etagVersion(out.ETag), nil
}

// etagVersion is an ETag as a version, without its quotes (servers differ
// in quoting it).
func etagVersion(etag *string) backup.ObjectVersion {
	return backup.ObjectVersion(strings.Trim(aws.ToString(etag), `"`))
}

// GetVersion implements backup.Store: the body and its ETag come in one
// GetObject.
func (s *Store) GetVersion(ctx context.Context, key string, limit int64) ([]byte, backup.ObjectVersion, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, "", err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(k)})
	if err != nil {
		return nil, "", s.wrap("get", key, err)
	}
	defer out.Body.Close()
	b, err := backup.ReadLimited(out.Body, key, limit)
	if err != nil {
		return nil, "", fmt.Errorf("s3: get %s: %w", key, err)
	}
	v := etagVersion(out.ETag)
	if v == "" {
		return nil, "", fmt.Errorf("s3: get %s: the server sent no ETag, which conditional writes need", key)
	}
	return b, v, nil
}

// Get implements backup.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(k)})
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	return out.Body, nil
}

// Stat implements backup.Store.
func (s *Store) Stat(ctx context.Context, key string) (backup.ObjectInfo, error) {
	k, err := s.key(key)
	if err != nil {
		return backup.ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(k)})
	if err != nil {
		return backup.ObjectInfo{}, s.wrap("stat", key, err)
	}
	return backup.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), Modified: aws.ToTime(out.LastModified),
		Retention: retentionOf(out.ObjectLockMode, out.ObjectLockRetainUntilDate)}, nil
}

// List implements backup.Store (ListObjectsV2 returns keys in order).
func (s *Store) List(ctx context.Context, prefix, after string, fn func(backup.ObjectInfo) error) error {
	full := prefix
	if s.prefix != "" {
		full = s.prefix + "/" + prefix
	}
	in := &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(full)}
	if after != "" {
		k := after // a position, not necessarily a key
		if s.prefix != "" {
			k = s.prefix + "/" + after
		}
		in.StartAfter = aws.String(k)
	}
	p := s3.NewListObjectsV2Paginator(s.client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s.wrap("list", prefix, err)
		}
		for _, o := range page.Contents {
			k := aws.ToString(o.Key)
			if s.prefix != "" {
				k = strings.TrimPrefix(k, s.prefix+"/")
			}
			if err := fn(backup.ObjectInfo{Key: k, Size: aws.ToInt64(o.Size), Modified: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements backup.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(k)}); err != nil {
		err = s.wrap("delete", key, err)
		if errors.Is(err, backup.ErrNotFound) {
			return nil
		}
		return err
	}
	return nil
}
