package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Tags and retention from the command line: a tagged backup survives a
// prune that keeps only the newest one and the tag, a dry run says which
// rule keeps what, and asking for a tag the latest backup lacks takes a
// backup even when nothing changed. Encrypted, the tag is in the index, so
// prune keeps by it without a private key.
func TestRetention_KeepTagAndCalendarFromTheCommandLine(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(map[bool]string{false: "plaintext", true: "encrypted"}[encrypted], func(t *testing.T) {
			root := t.TempDir()
			rec := flowDir(t, "1h")
			bucketDir := filepath.Join(root, "bucket")
			bucket := "file://" + bucketDir
			var keys []string
			if encrypted {
				_, recipients := ageKeys(t, root)
				keys = []string{"--recipients-file", recipients}
			}
			back := func(args ...string) string {
				return must(t, backupBin, append(append([]string{"backup", "-r", rec, "--to", bucket}, keys...), args...)...)
			}
			back("--tag", "release")
			for i, words := range []string{"one two\n", "three four\n"} {
				in := filepath.Join(root, "in"+string(rune('a'+i))+".txt")
				os.WriteFile(in, []byte(words), 0o644)
				must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(root, "o"+string(rune('a'+i))+".csv"), "-r", rec, "-s", "1s", "-b", "1h")
				back()
			}
			// Unchanged since, but asked for a tag the latest lacks.
			if out := back("--tag", "weekly"); strings.Contains(out, "unchanged") {
				t.Fatalf("a backup asked to carry a new tag was skipped as unchanged:\n%s", out)
			}
			manifests, _ := filepath.Glob(filepath.Join(bucketDir, "manifests", "*", "part-0000", "*.json"))
			if len(manifests) != 4 {
				t.Fatalf("%d backups of partition 0, want 4", len(manifests))
			}
			prune := append([]string{"prune", "--from", bucket, "--keep-last", "1", "--keep-tag", "release"}, keys...)
			dry := must(t, backupBin, append(prune, "--dry-run")...)
			if strings.Count(dry, "would delete manifests/") != 4 || strings.Count(dry, "tag release") != 2 || strings.Count(dry, "last 1") != 2 {
				t.Fatalf("dry run: want the two untagged older backups of each partition deleted, the release ones kept by their tag:\n%s", dry)
			}
			must(t, backupBin, prune...)
			manifests, _ = filepath.Glob(filepath.Join(bucketDir, "manifests", "*", "part-0000", "*.json"))
			if len(manifests) != 2 {
				t.Fatalf("%d backups of partition 0 left, want the release one and the newest", len(manifests))
			}
		})
	}
}
