package terraform

import (
	"slices"
	"strings"
	"testing"

	"github.com/flowkeep/flowkeep/backup/gcs"
	"github.com/flowkeep/flowkeep/backup/s3"
)

// union is the sorted union of action lists.
func union(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// statements returns a policy document's statements (dynamic ones by
// their content) as "sid effect actions on resources" lines.
func statements(t *testing.T, m *module, name string) string {
	t.Helper()
	doc := m.one(t, "data", "aws_iam_policy_document", name)
	var out []string
	for _, st := range doc.Body.Blocks {
		if st.Type == "dynamic" {
			st = child(t, st, "content")
		} else if st.Type != "statement" {
			continue
		}
		effect := "Allow"
		if _, ok := st.Body.Attributes["effect"]; ok {
			effect = literal(t, st, "effect").AsString()
		}
		out = append(out, m.source(t, st, "sid")+" "+effect+" "+m.source(t, st, "actions")+" on "+m.source(t, st, "resources"))
	}
	return strings.Join(out, "\n")
}

// The bucket can be made with Object Lock and a default retention, and
// keeps expiring old versions and orphaned delete markers (a locked
// version is never expired before its lock ends).
func TestAWSBucket_ObjectLock(t *testing.T) {
	m := load(t, "modules/aws-bucket")
	if got := m.source(t, m.one(t, "resource", "aws_s3_bucket"), "object_lock_enabled"); got != "var.object_lock" {
		t.Errorf("object_lock_enabled = %s", got)
	}
	lc := m.one(t, "resource", "aws_s3_bucket_object_lock_configuration")
	if got := m.source(t, lc, "count"); !strings.Contains(got, "var.object_lock") || !strings.Contains(got, "var.object_lock_default_retention") {
		t.Errorf("default retention count = %s", got)
	}
	dr := child(t, child(t, lc, "rule"), "default_retention")
	if m.source(t, dr, "mode") != "var.object_lock_default_retention.mode" || m.source(t, dr, "days") != "var.object_lock_default_retention.days" {
		t.Error("default retention does not come from object_lock_default_retention")
	}
	rule := child(t, m.one(t, "resource", "aws_s3_bucket_lifecycle_configuration"), "rule")
	if !literal(t, child(t, rule, "expiration"), "expired_object_delete_marker").True() {
		t.Error("orphaned delete markers are not expired")
	}
}

// With object lock the agent's role may write locked objects and lengthen
// locks (exactly what backup/s3 calls), delete only its lock objects and
// quarantine markers, and is denied deleting or unlocking backups; prune
// gets its own role, exposed as an output, with exactly what prune and
// undelete call and no governance bypass.
func TestAWSAgentIdentity_ObjectLockSplitsAgentAndPrune(t *testing.T) {
	m := load(t, "modules/aws-agent-identity")
	locals := m.one(t, "locals")
	if got := strings_(t, literal(t, locals, "object_lock_actions")); !slices.Equal(got, s3.ObjectLockActions) {
		t.Errorf("object lock actions %v, backup/s3 needs %v", got, s3.ObjectLockActions)
	}
	if got, want := strings_(t, literal(t, locals, "prune_actions")), union(s3.RequiredActions, s3.UndeleteActions); !slices.Equal(got, want) {
		t.Errorf("prune actions %v, want %v", got, want)
	}
	if got := m.source(t, locals, "actions"); !strings.Contains(got, `a != "s3:DeleteObject"`) || !strings.Contains(got, "local.object_lock_actions") {
		t.Errorf("with object lock the agent keeps s3:DeleteObject or lacks the lock actions: %s", got)
	}
	agent := statements(t, m, "agent")
	for _, want := range []string{
		`"DeleteOwnLocksAndMarkers" Allow ["s3:DeleteObject"] on ["${var.bucket_arn}/${local.prefix}/locks/*", "${var.bucket_arn}/${local.prefix}/quarantine/*"]`,
		`"NeverDeleteOrUnlockBackups" Deny ["s3:BypassGovernanceRetention", "s3:DeleteObject", "s3:DeleteObjectVersion"] on local.locked_objects`,
	} {
		if !strings.Contains(agent, want) {
			t.Errorf("agent policy lacks %s:\n%s", want, agent)
		}
	}
	for _, p := range []string{"chunks", "manifests", "lineages"} {
		if !strings.Contains(m.source(t, locals, "locked_objects"), p) {
			t.Errorf("locked_objects does not cover %s/", p)
		}
	}
	prune := statements(t, m, "prune")
	if !strings.Contains(prune, `"NeverUnlockBackups" Deny ["s3:BypassGovernanceRetention"]`) {
		t.Errorf("prune policy may bypass governance retention:\n%s", prune)
	}
	for _, out := range []string{"prune_role_name", "prune_instance_profile_name"} {
		if !strings.Contains(m.source(t, m.one(t, "output", out), "value"), "local.prune") {
			t.Errorf("output %s is not the prune identity's", out)
		}
	}
}

// The same shape on GCS: object retention on the bucket (no bucket
// retention policy), an agent that may set retentions but delete only what
// it rewrites, and a prune service account as an output.
func TestGCS_ObjectLock(t *testing.T) {
	b := load(t, "modules/gcs-bucket")
	bucket := b.one(t, "resource", "google_storage_bucket")
	if got := b.source(t, bucket, "enable_object_retention"); got != "var.object_retention" {
		t.Errorf("enable_object_retention = %s", got)
	}
	for _, blk := range bucket.Body.Blocks {
		if blk.Type == "retention_policy" {
			t.Error("a bucket retention policy would lock the objects flowkeep rewrites")
		}
	}
	m := load(t, "modules/gcs-agent-identity")
	locals := m.one(t, "locals")
	if got := strings_(t, literal(t, locals, "object_lock_permissions")); !slices.Equal(got, gcs.ObjectLockPermissions) {
		t.Errorf("object lock permissions %v, backup/gcs needs %v", got, gcs.ObjectLockPermissions)
	}
	if got := m.source(t, locals, "permissions"); !strings.Contains(got, `p != "storage.objects.delete"`) {
		t.Errorf("with object lock the agent keeps storage.objects.delete everywhere: %s", got)
	}
	cond := m.source(t, child(t, m.one(t, "resource", "google_storage_bucket_iam_member", "agent_rewrite"), "condition"), "expression")
	for _, p := range []string{"locks", "latest", "heartbeats", "quarantine", "config.json"} {
		if !strings.Contains(cond, p) {
			t.Errorf("the agent cannot rewrite %s: %s", p, cond)
		}
	}
	for _, p := range []string{"chunks", "manifests", "lineages"} {
		if strings.Contains(cond, p) {
			t.Errorf("the agent may delete %s: %s", p, cond)
		}
	}
	if got := m.source(t, m.one(t, "resource", "google_project_iam_custom_role", "prune"), "permissions"); got != "local.agent_permissions" {
		t.Errorf("prune permissions = %s", got)
	}
	if !strings.Contains(m.source(t, m.one(t, "output", "prune_email"), "value"), "google_service_account.prune") {
		t.Error("prune_email is not the prune service account")
	}
}
