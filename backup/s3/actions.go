package s3

// RequiredActions are the IAM actions the agent (backup, prune) needs on its
// bucket and prefix: exactly the S3 operations this package calls, mapped to
// IAM actions. TestActions_MatchCalls records real calls and checks this
// list; terraform/modules/aws-agent-identity grants exactly it.
//
//	HeadBucket, ListObjectsV2   s3:ListBucket
//	GetObject, HeadObject       s3:GetObject
//	PutObject                   s3:PutObject
//	DeleteObject                s3:DeleteObject
var RequiredActions = []string{
	"s3:DeleteObject",
	"s3:GetObject",
	"s3:ListBucket",
	"s3:PutObject",
}

// ReadOnlyActions are what verify, list and restore need.
var ReadOnlyActions = []string{
	"s3:GetObject",
	"s3:ListBucket",
}

// actionOf maps an S3 operation to its IAM action.
var actionOf = map[string]string{
	"HeadBucket":    "s3:ListBucket",
	"ListObjectsV2": "s3:ListBucket",
	"GetObject":     "s3:GetObject",
	"HeadObject":    "s3:GetObject",
	"PutObject":     "s3:PutObject",
	"DeleteObject":  "s3:DeleteObject",
}
