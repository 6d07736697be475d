// Package terraform holds flowkeep's Terraform modules; this test parses
// every module with hashicorp/hcl/v2 and checks the properties users rely
// on (no provider downloads needed).
package terraform

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/flowkeep/flowkeep/backup/gcs"
	"github.com/flowkeep/flowkeep/backup/s3"
)

// module is every .tf file of one directory, parsed.
type module struct {
	dir    string
	src    map[string][]byte
	blocks []*hclsyntax.Block
}

func load(t *testing.T, dir string) *module {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.tf"))
	if len(files) == 0 {
		t.Fatalf("no .tf files in %s", dir)
	}
	m := &module{dir: dir, src: map[string][]byte{}}
	p := hclparse.NewParser()
	for _, f := range files {
		file, diags := p.ParseHCLFile(f)
		if diags.HasErrors() {
			t.Fatalf("%s: %v", f, diags)
		}
		m.src[f] = file.Bytes
		m.blocks = append(m.blocks, file.Body.(*hclsyntax.Body).Blocks...)
	}
	return m
}

// find returns the blocks of a type with the given labels prefix.
func (m *module) find(typ string, labels ...string) []*hclsyntax.Block {
	var out []*hclsyntax.Block
	for _, b := range m.blocks {
		if b.Type == typ && len(b.Labels) >= len(labels) && slices.Equal(b.Labels[:len(labels)], labels) {
			out = append(out, b)
		}
	}
	return out
}

func (m *module) one(t *testing.T, typ string, labels ...string) *hclsyntax.Block {
	t.Helper()
	bs := m.find(typ, labels...)
	if len(bs) != 1 {
		t.Fatalf("%s: want one %s %v, found %d", m.dir, typ, labels, len(bs))
	}
	return bs[0]
}

func child(t *testing.T, b *hclsyntax.Block, typ string) *hclsyntax.Block {
	t.Helper()
	for _, c := range b.Body.Blocks {
		if c.Type == typ {
			return c
		}
	}
	t.Fatalf("%s %v has no %s block", b.Type, b.Labels, typ)
	return nil
}

// literal evaluates an attribute that must be a constant.
func literal(t *testing.T, b *hclsyntax.Block, name string) cty.Value {
	t.Helper()
	a, ok := b.Body.Attributes[name]
	if !ok {
		t.Fatalf("%s %v has no %s", b.Type, b.Labels, name)
	}
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		t.Fatalf("%s %v: %s is not a constant: %v", b.Type, b.Labels, name, diags)
	}
	return v
}

// source returns an attribute's expression as written.
func (m *module) source(t *testing.T, b *hclsyntax.Block, name string) string {
	t.Helper()
	a, ok := b.Body.Attributes[name]
	if !ok {
		t.Fatalf("%s %v has no %s", b.Type, b.Labels, name)
	}
	r := a.Expr.Range()
	return string(r.SliceBytes(m.src[r.Filename]))
}

func strings_(t *testing.T, v cty.Value) []string {
	t.Helper()
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		out = append(out, e.AsString())
	}
	return out
}

func dirs(t *testing.T) []string {
	var out []string
	filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			if fs, _ := filepath.Glob(filepath.Join(p, "*.tf")); len(fs) > 0 {
				out = append(out, p)
			}
		}
		return nil
	})
	if len(out) < 9 {
		t.Fatalf("found only %d module directories: %v", len(out), out)
	}
	return out
}

func TestEveryModule_ParsesAndDocumentsItsInterface(t *testing.T) {
	for _, d := range dirs(t) {
		m := load(t, d)
		for _, typ := range []string{"variable", "output"} {
			for _, b := range m.find(typ) {
				a, ok := b.Body.Attributes["description"]
				if !ok {
					t.Errorf("%s: %s %q has no description", d, typ, b.Labels[0])
					continue
				}
				if v, _ := a.Expr.Value(nil); v.IsKnown() && strings.TrimSpace(v.AsString()) == "" {
					t.Errorf("%s: %s %q has an empty description", d, typ, b.Labels[0])
				}
			}
		}
		for _, b := range m.find("module") {
			src := literal(t, b, "source").AsString()
			if _, err := os.Stat(filepath.Join(d, src)); err != nil {
				t.Errorf("%s: module %q sources %s, which does not exist", d, b.Labels[0], src)
			}
		}
	}
}

func TestAWSBucket_VersionedEncryptedPrivateAndExpiring(t *testing.T) {
	m := load(t, "modules/aws-bucket")
	v := child(t, m.one(t, "resource", "aws_s3_bucket_versioning"), "versioning_configuration")
	if s := literal(t, v, "status").AsString(); s != "Enabled" {
		t.Errorf("versioning status %q", s)
	}
	pab := m.one(t, "resource", "aws_s3_bucket_public_access_block")
	for _, a := range []string{"block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"} {
		if !literal(t, pab, a).True() {
			t.Errorf("public access block: %s is not true", a)
		}
	}
	rule := child(t, m.one(t, "resource", "aws_s3_bucket_lifecycle_configuration"), "rule")
	if got := m.source(t, child(t, rule, "noncurrent_version_expiration"), "noncurrent_days"); got != "var.noncurrent_version_days" {
		t.Errorf("noncurrent versions expire after %s", got)
	}
	sse := child(t, child(t, m.one(t, "resource", "aws_s3_bucket_server_side_encryption_configuration"), "rule"), "apply_server_side_encryption_by_default")
	if got := m.source(t, sse, "sse_algorithm"); !strings.Contains(got, `"aws:kms"`) || !strings.Contains(got, `"AES256"`) {
		t.Errorf("encryption: %s", got)
	}
	if got := m.source(t, m.one(t, "resource", "aws_s3_bucket"), "force_destroy"); got != "var.force_destroy" {
		t.Errorf("force_destroy = %s", got)
	}
}

func TestGCSBucket_VersionedPrivateAndExpiring(t *testing.T) {
	m := load(t, "modules/gcs-bucket")
	b := m.one(t, "resource", "google_storage_bucket")
	if !literal(t, child(t, b, "versioning"), "enabled").True() {
		t.Error("versioning is not enabled")
	}
	if literal(t, b, "public_access_prevention").AsString() != "enforced" {
		t.Error("public access prevention is not enforced")
	}
	if !literal(t, b, "uniform_bucket_level_access").True() {
		t.Error("uniform bucket-level access is off")
	}
	lr := child(t, b, "lifecycle_rule")
	if literal(t, child(t, lr, "action"), "type").AsString() != "Delete" {
		t.Error("lifecycle action is not Delete")
	}
	if got := m.source(t, child(t, lr, "condition"), "days_since_noncurrent_time"); got != "var.noncurrent_version_days" {
		t.Errorf("non-current versions deleted after %s", got)
	}
	// CMEK: Cloud Storage's service agent may use the key before the
	// bucket is made with it.
	kms := m.one(t, "resource", "google_kms_crypto_key_iam_member")
	if literal(t, kms, "role").AsString() != "roles/cloudkms.cryptoKeyEncrypterDecrypter" || m.source(t, kms, "crypto_key_id") != "var.kms_key_name" {
		t.Error("the storage service agent is not allowed to use the CMEK key")
	}
	if got := m.source(t, b, "depends_on"); !strings.Contains(got, "google_kms_crypto_key_iam_member.storage") {
		t.Errorf("the bucket does not wait for the key grant: depends_on = %s", got)
	}
}

func TestAWSAgentIdentity_ActionsAreExactlyWhatTheCodeCalls(t *testing.T) {
	m := load(t, "modules/aws-agent-identity")
	locals := m.one(t, "locals")
	if got := strings_(t, literal(t, locals, "agent_actions")); !slices.Equal(got, s3.RequiredActions) {
		t.Errorf("agent actions %v, backup/s3 calls need %v", got, s3.RequiredActions)
	}
	if got := strings_(t, literal(t, locals, "readonly_actions")); !slices.Equal(got, s3.ReadOnlyActions) {
		t.Errorf("read-only actions %v, want %v", got, s3.ReadOnlyActions)
	}
	doc := m.one(t, "data", "aws_iam_policy_document", "agent")
	var srcs []string
	for _, st := range doc.Body.Blocks {
		if st.Type == "statement" {
			srcs = append(srcs, m.source(t, st, "actions")+" on "+m.source(t, st, "resources"))
		}
	}
	joined := strings.Join(srcs, "\n")
	for _, want := range []string{`["s3:ListBucket"] on [var.bucket_arn]`, "local.object_actions on [\"${var.bucket_arn}/${local.prefix}/*\"]"} {
		if !strings.Contains(joined, want) {
			t.Errorf("policy lacks %s; statements:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, `"s3:*"`) || strings.Contains(joined, `"*"]`) {
		t.Errorf("policy grants a wildcard:\n%s", joined)
	}
}

func TestGCSAgentIdentity_PermissionsAreExactlyWhatTheCodeCalls(t *testing.T) {
	m := load(t, "modules/gcs-agent-identity")
	locals := m.one(t, "locals")
	if got := strings_(t, literal(t, locals, "agent_permissions")); !slices.Equal(got, gcs.RequiredPermissions) {
		t.Errorf("agent permissions %v, backup/gcs calls need %v", got, gcs.RequiredPermissions)
	}
	if got := strings_(t, literal(t, locals, "readonly_permissions")); !slices.Equal(got, gcs.ReadOnlyPermissions) {
		t.Errorf("read-only permissions %v, want %v", got, gcs.ReadOnlyPermissions)
	}
	if got := m.source(t, m.one(t, "resource", "google_project_iam_custom_role", "agent"), "permissions"); got != "local.permissions" {
		t.Errorf("custom role permissions = %s", got)
	}
	cond := child(t, m.one(t, "resource", "google_storage_bucket_iam_member", "agent"), "condition")
	if !strings.Contains(m.source(t, cond, "expression"), "objects/${local.prefix}/") {
		t.Error("the binding is not limited to the prefix")
	}
}

func TestNodes_RunBothServicesWithTheirOwnDiskAndIdentity(t *testing.T) {
	aws := load(t, "modules/aws-node")
	if got := aws.source(t, aws.one(t, "resource", "aws_instance"), "iam_instance_profile"); got != "var.instance_profile_name" {
		t.Errorf("aws instance profile = %s", got)
	}
	aws.one(t, "resource", "aws_ebs_volume", "recovery")
	aws.one(t, "resource", "aws_volume_attachment", "recovery")
	gcp := load(t, "modules/gcp-node")
	inst := gcp.one(t, "resource", "google_compute_instance")
	if got := gcp.source(t, child(t, inst, "service_account"), "email"); got != "var.service_account_email" {
		t.Errorf("gcp service account = %s", got)
	}
	child(t, inst, "attached_disk")
	for _, m := range []*module{aws, gcp} {
		var found bool
		for _, b := range m.src {
			found = found || strings.Contains(string(b), `templatefile("${path.module}/../cloud-init/flowkeep.yaml.tftpl"`)
		}
		if !found {
			t.Errorf("%s does not render the cloud-init template", m.dir)
		}
	}
	tpl, err := os.ReadFile("modules/cloud-init/flowkeep.yaml.tftpl")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"flowrun.service", "flowbackup-agent.service", "/var/lib/flowkeep", "flowbackup agent --config", "systemctl enable --now"} {
		if !strings.Contains(string(tpl), want) {
			t.Errorf("cloud-init template lacks %q", want)
		}
	}
}
