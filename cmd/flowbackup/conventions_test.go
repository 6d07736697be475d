package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The conventions an operator relies on (issue "Operations that never
// lie"): usage and access errors exit 3 with what to do; settings mean one
// thing; durations take days and bare seconds; bare boolean flags work;
// nothing is changed in silence.
func TestCLI_ConventionsOperatorsRelyOn(t *testing.T) {
	rec := flowDir(t, "5s")
	root := t.TempDir()
	bucket := filepath.Join(root, "bucket")
	to := "file://" + bucket
	must(t, backupBin, "backup", "-r", rec, "--to", to)
	target := filepath.Join(root, "restored")
	open := filepath.Join(root, "open")
	if err := os.Mkdir(open, 0o777); err != nil || os.Chmod(open, 0o777) != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		says string
	}{
		{"FLOWBACKUP_TO is a URL for the agent, never restore's directory", []string{"FLOWBACKUP_TO=" + to},
			[]string{"restore", "--from", to}, 3, "looks like a storage URL"},
		{"FLOWBACKUP_URL names the location for every subcommand", []string{"FLOWBACKUP_URL=" + to},
			[]string{"list"}, 0, "restorable to epoch"},
		{"FLOWBACKUP_URL for restore's --from", []string{"FLOWBACKUP_URL=" + to},
			[]string{"restore", "--to", target, "--dry-run"}, 0, "would restore"},
		{"deep verify into a missing temp dir", nil, []string{"verify", "--from", to, "--deep", "--temp-dir", "/missing"}, 3, "--temp-dir /missing"},
		{"deep verify into a temp dir other users can change", nil, []string{"verify", "--from", to, "--deep", "--temp-dir", open}, 3, "only you and root can write in"},
		{"restore of a partition the flow does not have", nil, []string{"restore", "--from", to, "--to", target, "--partitions", "9"}, 3, "partition 9 does not exist"},
		{"restore where nothing can be written", nil, []string{"restore", "--from", to, "--to", "/proc/flowkeep-test"}, 3, "cannot write in /proc"},
		{"keep-within in days", nil, []string{"prune", "--from", to, "--keep-last", "1", "--keep-within", "7d", "--dry-run"}, 0, "would delete"},
		{"max-age in bare seconds", nil, []string{"verify", "--from", to, "--max-age", "300000"}, 0, "healthy"},
		{"a bare --s3-path-style", nil, []string{"list", "--from", to, "--s3-path-style"}, 0, "restorable"},
		{"@every below a second is refused, not rounded", nil, []string{"agent", "-r", rec, "--to", to, "--schedule", "@every 1ms"}, 3, "at least 1s"},
		{"--sample 0 is refused, not ignored", nil, []string{"verify", "--from", to, "--sample", "0"}, 3, "--sample must be a percentage above 0"},
		{"a backup into the recovery directory", nil, []string{"backup", "-r", rec, "--to", "file://" + filepath.Join(rec, "backups")}, 3, "inside the recovery directory"},
		{"list has column headers", nil, []string{"list", "--from", to}, 0, "PART     BACKUP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runEnv(t, tt.env, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.says) {
				t.Fatalf("exit %d, want %d saying %q:\n%s", code, tt.code, tt.says, out)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(rec, "backups")); err == nil {
		t.Fatal("a refused backup created its destination inside the recovery directory")
	}
	// Help shows each default once, and each subcommand its own exit codes.
	for _, sub := range []string{"agent", "prune", "backup", "restore", "list"} {
		out := must(t, backupBin, sub, "--help")
		if regexp.MustCompile(`\(default [^)]*\) \(default`).MatchString(out) {
			t.Errorf("%s --help shows a default twice:\n%s", sub, out)
		}
		if sub != "restore" && strings.Contains(out, "2  not restorable") {
			t.Errorf("%s --help lists restore's exit code 2", sub)
		}
	}
	// Prune says what the grace holds back: the flow moves twice, so the
	// second backup's delta is named by no backup once prune deletes it.
	in := filepath.Join(filepath.Dir(rec), "in.txt")
	for i := 0; i < 2; i++ {
		f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString("more words here\n")
		f.Close()
		must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "1s", "-b", "5s")
		must(t, backupBin, "backup", "-r", rec, "--to", to)
	}
	if out := must(t, backupBin, "prune", "--from", to, "--keep-last", "1"); !strings.Contains(out, "held back") || !strings.Contains(out, "younger than --grace") {
		t.Fatalf("prune does not say what the grace holds back:\n%s", out)
	}
	// An object in manifests/ that is not a manifest does not stop prune;
	// it stops the chunk sweep, and prune says so with exit 1.
	garbage := filepath.Join(bucket, "manifests", "zz-not-a-manifest.json")
	if err := os.WriteFile(garbage, []byte("\x00garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, backupBin, "prune", "--from", to, "--keep-last", "1"); code != 1 ||
		!strings.Contains(out, "unreadable manifests/zz-not-a-manifest.json") || !strings.Contains(out, "no chunk was deleted") {
		t.Fatalf("prune with garbage in manifests/: exit %d\n%s", code, out)
	}
}
