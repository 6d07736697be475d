package main

import (
	"context"
	"encoding/json"

	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowkeep/flowkeep/internal/testserver"
)

// runEnv is run with extra environment variables.
func runEnv(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(backupBin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// Settings that would be unsafe or that are typos are usage errors (exit
// 3), never accepted silently, and never "not restorable" (exit 2).
func TestCLI_UnsafeSettingsAndTyposExitThree(t *testing.T) {
	rec := flowDir(t, "5s")
	to := "file://" + t.TempDir()
	must(t, backupBin, "backup", "-r", rec, "--to", to)
	cfgDir := t.TempDir()
	typo := filepath.Join(cfgDir, "typo.yaml")
	os.WriteFile(typo, []byte("recovery_dir: "+rec+"\nurl: "+to+"\nschedulle: \"@every 5m\"\n"), 0o644)
	unset := filepath.Join(cfgDir, "unset.yaml")
	os.WriteFile(unset, []byte("url: file://${FLOWKEEP_TEST_NOT_SET}\n"), 0o644)
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"@every 0s", []string{"agent", "-r", rec, "--to", to, "--schedule", "@every 0s"}, "positive duration"},
		{"@every -5m", []string{"agent", "-r", rec, "--to", to, "--schedule", "@every -5m"}, "positive duration"},
		{"workers 0", []string{"agent", "-r", rec, "--to", to, "--schedule", "@every 5m", "--workers", "0"}, "--workers must be at least 1"},
		{"workers -3", []string{"backup", "-r", rec, "--to", to, "--workers", "-3"}, "--workers must be at least 1"},
		{"lock-ttl 0", []string{"backup", "-r", rec, "--to", to, "--lock-ttl", "0"}, "--lock-ttl 0s is too short"},
		{"max-age -1m", []string{"verify", "--from", to, "--max-age", "-1m"}, "--max-age must not be negative"},
		{"extra argument", []string{"list", "--from", to, "extra"}, "takes no arguments"},
		{"unknown subcommand", []string{"lsit"}, `unknown command "lsit"`},
		{"mistyped --flow on verify", []string{"verify", "--from", to, "--flow", "wordcuont"}, `no flow "wordcuont"`},
		{"mistyped --flow on restore", []string{"restore", "--from", to, "--to", t.TempDir(), "--flow", "wordcuont"}, `no flow "wordcuont"`},
		{"--epoch beyond the newest", []string{"restore", "--from", to, "--to", filepath.Join(t.TempDir(), "r"), "--epoch", "999"}, "epoch 999 is newer than the newest restorable epoch, 2"},
		{"unknown config key", []string{"list", "--config", typo}, `unknown setting "schedulle"`},
		{"unset ${VAR} in config", []string{"list", "--config", unset}, "${FLOWKEEP_TEST_NOT_SET}, which is not set"},
		{"bad log format", []string{"agent", "-r", rec, "--to", to, "--schedule", "@every 5m", "--log-format", "xml"}, "--log-format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, backupBin, tt.args...)
			if code != 3 || !strings.Contains(out, tt.msg) {
				t.Fatalf("exit %d, output:\n%s\nwant exit 3 and %q", code, out, tt.msg)
			}
		})
	}
}

// One config file serves every subcommand, with ${VAR} expanded; the
// environment (FLOWBACKUP_<FLAG>) beats the file and the command line
// beats both.
func TestCLI_OneConfigForEverySubcommand(t *testing.T) {
	rec := flowDir(t, "5s")
	bucket := filepath.Join(t.TempDir(), "backups", "wc") // created by the first backup
	cfg := filepath.Join(t.TempDir(), "flowbackup.yaml")
	os.WriteFile(cfg, []byte(`recovery_dir: `+rec+`
url: file://${FLOWKEEP_TEST_BUCKET}
keep_last: 1
workers: 4
restore:
  if_empty: true
verify:
  max_age: 1h
`), 0o644)
	env := []string{"FLOWKEEP_TEST_BUCKET=" + bucket}
	for _, args := range [][]string{{"backup"}, {"backup", "--even-unchanged"}} {
		if out, code := runEnv(t, env, append(args, "--config", cfg)...); code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
	}
	if out, code := runEnv(t, env, "list", "--config", cfg); code != 0 || !strings.Contains(out, "restorable to epoch 2") {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	if out, code := runEnv(t, env, "verify", "--config", cfg); code != 0 || !strings.Contains(out, "healthy") {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
	// Two backups per partition: prune (keep_last 1 from the file) deletes
	// the older ones.
	if out, code := runEnv(t, env, "prune", "--config", cfg); code != 0 || !strings.Contains(out, "deleted 2 backups") {
		t.Fatalf("prune: exit %d\n%s", code, out)
	}
	// restore's target defaults to recovery_dir, which holds the flow:
	// if_empty (from the restore: section) makes it a no-op, exit 0.
	if out, code := runEnv(t, env, "restore", "--config", cfg); code != 0 || !strings.Contains(out, "nothing restored (--if-empty)") {
		t.Fatalf("restore into the live directory: exit %d\n%s", code, out)
	}
	// The environment beats the file; the command line beats both.
	elsewhere := "file://" + t.TempDir()
	if out, code := runEnv(t, append(env, "FLOWBACKUP_FROM="+elsewhere), "list", "--config", cfg); code != 0 || !strings.Contains(out, "no backups in") {
		t.Fatalf("FLOWBACKUP_FROM did not win over the file: exit %d\n%s", code, out)
	}
	if out, code := runEnv(t, append(env, "FLOWBACKUP_FROM="+elsewhere), "list", "--config", cfg, "--from", "file://"+bucket); code != 0 || !strings.Contains(out, "restorable to epoch 2") {
		t.Fatalf("--from did not win over FLOWBACKUP_FROM: exit %d\n%s", code, out)
	}
	// FLOWBACKUP_CONFIG names the file too.
	if out, code := runEnv(t, append(env, "FLOWBACKUP_CONFIG="+cfg), "list"); code != 0 || !strings.Contains(out, "restorable to epoch 2") {
		t.Fatalf("FLOWBACKUP_CONFIG: exit %d\n%s", code, out)
	}
}

// --flow takes a flow's name as well as its uid; backup, restore and prune
// print JSON on request; restore says when it has nothing to do.
func TestCLI_FlowNamesJSONAndRestoreConditions(t *testing.T) {
	rec := flowDir(t, "5s")
	empty := "file://" + t.TempDir()
	to := "file://" + t.TempDir()
	var b struct {
		Partitions []struct {
			Partition int    `json:"partition"`
			OK        bool   `json:"ok"`
			ID        string `json:"id"`
			Hi        uint64 `json:"hi"`
		} `json:"partitions"`
	}
	if err := json.Unmarshal([]byte(must(t, backupBin, "backup", "-r", rec, "--to", to, "--json")), &b); err != nil || len(b.Partitions) != 2 || !b.Partitions[0].OK || b.Partitions[1].Hi != 2 {
		t.Fatalf("backup --json: %v %+v", err, b)
	}
	if out := must(t, backupBin, "verify", "--from", to, "--flow", "wordcount"); !strings.Contains(out, "flow wordcount") {
		t.Fatalf("verify --flow wordcount:\n%s", out)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	var r struct {
		Restored   bool   `json:"restored"`
		Epoch      uint64 `json:"epoch"`
		Downloaded int64  `json:"downloaded_bytes"`
		Written    int64  `json:"written_bytes"`
	}
	if err := json.Unmarshal([]byte(must(t, backupBin, "restore", "--from", to, "--to", dst, "--flow", "wordcount", "--json")), &r); err != nil || !r.Restored || r.Epoch != 2 || r.Downloaded <= 0 || r.Downloaded >= r.Written {
		t.Fatalf("restore --json: %v %+v (downloaded must be the compressed bytes, less than written)", err, r)
	}
	if out, code := run(t, backupBin, "restore", "--from", to, "--to", dst, "--if-empty"); code != 0 || !strings.Contains(out, "already holds 2 recovery partitions") {
		t.Fatalf("restore --if-empty into a full directory: exit %d\n%s", code, out)
	}
	if out, code := run(t, backupBin, "restore", "--from", empty, "--to", filepath.Join(t.TempDir(), "x"), "--if-backups-exist"); code != 0 || !strings.Contains(out, "holds no backups yet") {
		t.Fatalf("restore --if-backups-exist from an empty store: exit %d\n%s", code, out)
	}
	if out, code := run(t, backupBin, "restore", "--from", empty, "--to", filepath.Join(t.TempDir(), "x")); code != 2 {
		t.Fatalf("restore from an empty store without --if-backups-exist: exit %d, want 2\n%s", code, out)
	}
	var p map[string]any
	if err := json.Unmarshal([]byte(must(t, backupBin, "prune", "--from", to, "--keep-last", "1", "--json")), &p); err != nil || p["kept_backups"] != float64(2) {
		t.Fatalf("prune --json: %v %v", err, p)
	}
}

// --version and version name the build; docs man writes a page per command.
func TestCLI_VersionAndManPages(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		if out := must(t, backupBin, args...); !strings.HasPrefix(out, "flowbackup ") {
			t.Fatalf("%v: %q", args, out)
		}
	}
	dir := filepath.Join(t.TempDir(), "man")
	must(t, backupBin, "docs", "man", dir)
	for _, page := range []string{"flowbackup.1", "flowbackup-restore.1", "flowbackup-agent.1"} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil || !strings.Contains(string(b), ".TH") {
			t.Fatalf("%s: %v %q", page, err, b[:min(len(b), 80)])
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "flowbackup-restore.1")); !strings.Contains(string(b), "--if-empty") {
		t.Fatal("the restore man page does not document --if-empty")
	}
}

// backup creates a missing file:// destination; reading commands do not.
func TestCLI_BackupCreatesAFileDestination(t *testing.T) {
	rec := flowDir(t, "5s")
	dest := filepath.Join(t.TempDir(), "a", "b", "c")
	must(t, backupBin, "backup", "-r", rec, "--to", "file://"+dest)
	if out := must(t, backupBin, "list", "--from", "file://"+dest); !strings.Contains(out, "restorable to epoch 2") {
		t.Fatalf("list:\n%s", out)
	}
	if out, code := run(t, backupBin, "list", "--from", "file://"+filepath.Join(dest, "missing")); code != 3 || !strings.Contains(out, "does not exist") {
		t.Fatalf("list of a missing directory: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dest, "missing")); err == nil {
		t.Fatal("list created the directory it was asked to read")
	}

}

// A custom S3 endpoint (the flag, or AWS_ENDPOINT_URL_S3) turns on path-style
// addressing by default: S3-compatible servers do not resolve bucket.host.
func TestCLI_S3EndpointImpliesPathStyle(t *testing.T) {
	srv, err := testserver.StartVersity()
	if err != nil {
		testserver.Missing(t, err)
	}
	defer srv.Stop()
	bucket := testserver.NewName("fk")
	if err := srv.CreateS3Bucket(context.Background(), bucket); err != nil {
		t.Fatal(err)
	}
	rec := flowDir(t, "5s")
	env := append(srv.S3Env(), "AWS_REGION="+testserver.S3Region)
	// By name, not IP: the SDK addresses an IP endpoint by path anyway.
	endpoint := strings.Replace(srv.S3Endpoint(), "127.0.0.1", "localhost", 1)
	if out, code := runEnv(t, env, "backup", "-r", rec, "--to", "s3://"+bucket+"/a", "--s3-endpoint", endpoint); code != 0 {
		t.Fatalf("--s3-endpoint without --s3-path-style: exit %d\n%s", code, out)
	}
	if out, code := runEnv(t, append(env, "AWS_ENDPOINT_URL_S3="+endpoint), "list", "--from", "s3://"+bucket+"/a"); code != 0 || !strings.Contains(out, "restorable to epoch 2") {
		t.Fatalf("AWS_ENDPOINT_URL_S3: exit %d\n%s", code, out)
	}
	if out, code := runEnv(t, env, "list", "--from", "s3://"+bucket+"/a", "--s3-endpoint", endpoint, "--s3-path-style=false"); code == 0 {
		t.Fatalf("--s3-path-style=false against a server that needs it worked:\n%s", out)
	}
}

// A subcommand's section of the config file is more specific than the
// top level: it wins, whatever the keys' names.
func TestCLI_ConfigSectionWinsOverTheTopLevel(t *testing.T) {
	rec := flowDir(t, "5s")
	bucket := "file://" + t.TempDir()
	must(t, backupBin, "backup", "-r", rec, "--to", bucket)
	cfg := filepath.Join(t.TempDir(), "flowbackup.yaml")
	os.WriteFile(cfg, []byte("url: file://"+t.TempDir()+"\nlist:\n  from: "+bucket+"\n"), 0o644)
	if out, code := run(t, backupBin, "list", "--config", cfg); code != 0 || !strings.Contains(out, "restorable to epoch 2") {
		t.Fatalf("list: the list section's from did not win over the top-level url: exit %d\n%s", code, out)
	}
}
