package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// copyResult is flowbackup copy --json.
type copyResult struct {
	CopiedObjects int64 `json:"copied_objects"`
	CopiedBytes   int64 `json:"copied_bytes"`
	CopiedBackups int   `json:"copied_backups"`
	NotCopied     []any `json:"not_copied"`
}

func copyCmd(t *testing.T, env []string, from, to string) copyResult {
	t.Helper()
	out := mustCmd(t, env, backupBin, "copy", "--from", from, "--to", to, "--json")
	var r copyResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("copy --json: %v\n%s", err, out)
	}
	if len(r.NotCopied) != 0 {
		t.Fatalf("copy %s -> %s left backups out:\n%s", from, to, out)
	}
	return r
}

// Drill "copy": a second copy in another cloud. Backups in S3 (versitygw) are
// copied to GCS (fake-gcs-server) with no key, once in the clear and once
// encrypted and signed; the copy verifies deep, a second copy moves
// nothing, and copied back into a new S3 prefix the backups restore a flow
// that continues exactly as the original does.
func TestDrillCopy_S3ToGCSAndBack(t *testing.T) {
	bs := backends(t)
	s3b, gcsb := bs[0], bs[1]
	// The copy runs with both servers' settings and no key at all.
	keyless := append(s3b.env(s3b.addr), gcsb.env(gcsb.addr)...)
	for _, c := range []struct {
		name   string
		writer []string // the agent's, and the readers' (keys included)
	}{
		{"plain", keyless},
		{"age+signed", append(bs[2].env(bs[2].addr), gcsb.env(gcsb.addr)...)},
	} {
		t.Run(c.name, func(t *testing.T) {
			began := time.Now()
			dir := t.TempDir()
			s3url, gsurl, back := s3b.newURL(t), gcsb.newURL(t), s3b.newURL(t)
			rec, in, out := bigFlow(t, dir, 2)
			mustCmd(t, c.writer, backupBin, "backup", "-r", rec, "--to", s3url)
			appendWordsFrom(t, in, 5_000, 9_000_000, 2000, 5)
			wcRun(t, in, out, rec)
			mustCmd(t, c.writer, backupBin, "backup", "-r", rec, "--to", s3url)

			first := copyCmd(t, keyless, s3url, gsurl)
			if first.CopiedBackups != 4 || first.CopiedBytes == 0 {
				t.Fatalf("S3 -> GCS: %+v", first)
			}
			if v := mustCmd(t, c.writer, backupBin, "verify", "--from", gsurl, "--deep"); !strings.Contains(v, "4 of 4 backups healthy") {
				t.Fatalf("verify --deep of the GCS copy:\n%s", v)
			}
			if again := copyCmd(t, keyless, s3url, gsurl); again.CopiedObjects != 0 || again.CopiedBytes != 0 {
				t.Fatalf("S3 -> GCS again: %+v", again)
			}
			// And back: into a new S3 prefix (everything), and into the
			// original (which holds it all already).
			if r := copyCmd(t, keyless, gsurl, back); r.CopiedBackups != 4 {
				t.Fatalf("GCS -> new S3 prefix: %+v", r)
			}
			if r := copyCmd(t, keyless, gsurl, s3url); r.CopiedObjects != 0 || r.CopiedBytes != 0 {
				t.Fatalf("GCS -> the original S3 prefix: %+v", r)
			}
			target := filepath.Join(dir, "restored")
			mustCmd(t, c.writer, backupBin, "restore", "--from", back, "--to", target)
			// The restored partitions resume where the original ones are.
			saved := filepath.Join(dir, "out-before.csv")
			copyFile(t, out, saved)
			appendWordsFrom(t, in, 2_000, 9_500_000, 2000, 6)
			wcRun(t, in, out, rec)
			a, _ := os.ReadFile(out)
			copyFile(t, saved, out)
			wcRun(t, in, out, target)
			b, _ := os.ReadFile(out)
			if diff := sameWordcountOutput(b, a); len(a) == 0 || diff != "" {
				t.Fatalf("the run restored from the copy of the copy differs from the original's: %s", diff)
			}
			drillLog(t, began, "nothing (S3 -> GCS -> S3 with no key; the copy verifies deep; a second copy moves 0 bytes; the restored flow continues exactly)")
		})
	}
}
