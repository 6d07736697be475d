package flowbackup

import (
	"context"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/storeurl"
)

// storageOptions are the backend settings every subcommand accepts.
type storageOptions struct {
	S3Endpoint  string
	S3Region    string
	S3PathStyle optionalBool
	S3SSE       string
	S3KMSKeyID  string
}

// optionalBool is a boolean flag that knows whether it was set.
type optionalBool struct{ v, set bool }

func (b *optionalBool) String() string   { return strconv.FormatBool(b.v) }
func (b *optionalBool) Type() string     { return "bool" }
func (b *optionalBool) IsBoolFlag() bool { return true }
func (b *optionalBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	b.v, b.set = v, true
	return nil
}

func (o *storageOptions) addFlags(f *pflag.FlagSet) {
	if v, ok := os.LookupEnv("FLOWKEEP_S3_PATH_STYLE"); ok { // the older name
		o.S3PathStyle.Set(v)
	}
	f.StringVar(&o.S3Endpoint, "s3-endpoint", os.Getenv("FLOWKEEP_S3_ENDPOINT"), "S3 endpoint for S3-compatible servers (e.g. http://127.0.0.1:7070); buckets are then addressed by path unless --s3-path-style=false. AWS_ENDPOINT_URL_S3 works too")
	f.StringVar(&o.S3Region, "s3-region", "", "S3 region (default: from the AWS configuration, else us-east-1)")
	f.Var(&o.S3PathStyle, "s3-path-style", "address S3 buckets by path, not by host name (default: on with a custom endpoint; a bare --s3-path-style means true)")
	f.Lookup("s3-path-style").NoOptDefVal = "true"
	f.StringVar(&o.S3SSE, "s3-sse", "", "S3 server-side encryption: AES256 or aws:kms")
	f.StringVar(&o.S3KMSKeyID, "s3-sse-kms-key-id", "", "KMS key for --s3-sse aws:kms (default: the AWS managed key)")
}

// pathStyle is --s3-path-style, defaulting to on when the endpoint is not
// AWS's own (--s3-endpoint or AWS_ENDPOINT_URL_S3): most S3-compatible
// servers do not resolve bucket.host names.
func (o storageOptions) pathStyle() bool {
	if o.S3PathStyle.set {
		return o.S3PathStyle.v
	}
	return o.S3Endpoint != "" || os.Getenv("AWS_ENDPOINT_URL_S3") != "" || os.Getenv("AWS_ENDPOINT_URL") != ""
}

// open opens the storage at url for reading.
func (o storageOptions) open(ctx context.Context, url string) (backup.Store, error) {
	return o.openStore(ctx, url, false)
}

// openDest opens a backup destination: a missing file:// directory is
// created.
func (o storageOptions) openDest(ctx context.Context, url string) (backup.Store, error) {
	return o.openStore(ctx, url, true)
}

func (o storageOptions) openStore(ctx context.Context, url string, create bool) (backup.Store, error) {
	if url == "" {
		return nil, usagef("name the storage URL (%s)", storeurl.Schemes)
	}
	so := storeurl.Options{Create: create}
	so.S3.Endpoint, so.S3.Region, so.S3.PathStyle, so.S3.SSE, so.S3.KMSKeyID = o.S3Endpoint, o.S3Region, o.pathStyle(), o.S3SSE, o.S3KMSKeyID
	s, err := storeurl.Open(ctx, url, so)
	if err != nil {
		return nil, usageError{err}
	}
	// Transient faults (5xx, dropped connections, cut bodies) are retried
	// with backoff; answers like "not found" or "access denied" are not.
	return backup.WithRetry(s, backup.RetryPolicy{}), nil
}
