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
	S3PathStyle bool
	S3SSE       string
	S3KMSKeyID  string
}

func (o *storageOptions) addFlags(f *pflag.FlagSet) {
	pathStyle, _ := strconv.ParseBool(os.Getenv("FLOWKEEP_S3_PATH_STYLE"))
	f.StringVar(&o.S3Endpoint, "s3-endpoint", os.Getenv("FLOWKEEP_S3_ENDPOINT"), "S3 endpoint for S3-compatible servers (e.g. http://127.0.0.1:7070); env FLOWKEEP_S3_ENDPOINT")
	f.StringVar(&o.S3Region, "s3-region", "", "S3 region (default: from the AWS configuration, else us-east-1)")
	f.BoolVar(&o.S3PathStyle, "s3-path-style", pathStyle, "address S3 buckets by path (most S3-compatible servers need it); env FLOWKEEP_S3_PATH_STYLE")
	f.StringVar(&o.S3SSE, "s3-sse", "", "S3 server-side encryption: AES256 or aws:kms")
	f.StringVar(&o.S3KMSKeyID, "s3-sse-kms-key-id", "", "KMS key for --s3-sse aws:kms (default: the AWS managed key)")
}

func (o storageOptions) open(ctx context.Context, url string) (backup.Store, error) {
	if url == "" {
		return nil, usagef("name the storage URL (%s)", storeurl.Schemes)
	}
	so := storeurl.Options{}
	so.S3.Endpoint, so.S3.Region, so.S3.PathStyle, so.S3.SSE, so.S3.KMSKeyID = o.S3Endpoint, o.S3Region, o.S3PathStyle, o.S3SSE, o.S3KMSKeyID
	s, err := storeurl.Open(ctx, url, so)
	if err != nil {
		return nil, usageError{err}
	}
	// Transient faults (5xx, dropped connections, cut bodies) are retried
	// with backoff; answers like "not found" or "access denied" are not.
	return backup.WithRetry(s, backup.RetryPolicy{}), nil
}
