package gcs

// RequiredPermissions are the IAM permissions the agent (backup, prune)
// needs: exactly the calls this package makes. TestPermissions_MatchCalls
// records real calls and checks this list;
// terraform/modules/gcs-agent-identity grants exactly it in a custom role.
//
//	bucket Attrs (open)         storage.buckets.get
//	object writes               storage.objects.create
//	reads, Attrs                storage.objects.get
//	listing                     storage.objects.list
//	Delete                      storage.objects.delete
var RequiredPermissions = []string{
	"storage.buckets.get",
	"storage.objects.create",
	"storage.objects.delete",
	"storage.objects.get",
	"storage.objects.list",
}

// ReadOnlyPermissions are what verify, list and restore need.
var ReadOnlyPermissions = []string{
	"storage.buckets.get",
	"storage.objects.get",
	"storage.objects.list",
}
