package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// Drill 8: encrypted backups against real S3 and GCS servers. The bucket
// holds no state in the clear; a missing identity is exit 3 and a wrong
// one exit 1 "cannot decrypt", never "corrupt" and never a fallback; a
// plaintext backup cannot join an encrypted location; after the
// recipients are rotated, the new identity alone restores the newest
// epoch.
func TestDrill8_EncryptedBackups(t *testing.T) {
	for _, b := range backends(t) {
		if b.identity == "" {
			continue
		}
		t.Run(b.name, func(t *testing.T) {
			began := time.Now()
			dir := t.TempDir()
			env, plain := b.env(b.addr), b.plain(b.addr)
			url := b.newURL(t)
			rec, in, out := bigFlow(t, dir, 2)
			// State a bucket reader must never see: words of the input.
			const secret = "alice-card-4111111111111111"
			f, err := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(strings.Repeat(secret+" ", 8) + "\n")
			f.Close()
			wcRun(t, in, out, rec)
			mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url)

			ctx := context.Background()
			st := b.open(t, url)
			clear := []string{secret, "SQLite format 3"}
			err = st.List(ctx, "", "", func(oi backup.ObjectInfo) error {
				data, err := backup.ReadAll(ctx, st, oi.Key, 1<<30)
				for _, w := range clear {
					if bytes.Contains(data, []byte(w)) {
						t.Fatalf("%s holds %q in the clear", oi.Key, w)
					}
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}

			_, stranger := ageKeys(dir, "stranger")
			expect := func(code int, says string, args ...string) string {
				t.Helper()
				r := runCmd(t, plain, backupBin, args...)
				if r.code != code || !strings.Contains(r.out, says) || strings.Contains(r.out, "corrupt") || strings.Contains(r.out, "fallback") {
					t.Fatalf("flowbackup %s: exit %d, want %d saying %q:\n%s", strings.Join(args, " "), r.code, code, says, r.out)
				}
				return r.out
			}
			expect(0, "healthy", "verify", "--from", url)
			expect(3, "give the age identity", "verify", "--from", url, "--deep")
			expect(1, "cannot decrypt with the given identities", "verify", "--from", url, "--deep", "--identity-file", stranger)
			expect(0, "healthy", "verify", "--from", url, "--deep", "--identity-file", b.identity)
			target := filepath.Join(dir, "restored")
			expect(3, "give the age identity", "restore", "--from", url, "--to", target)
			expect(1, "cannot decrypt with the given identities", "restore", "--from", url, "--to", target, "--identity-file", stranger)
			if ents, _ := os.ReadDir(target); len(ents) > 0 {
				t.Fatalf("a restore without the key left %d files in %s", len(ents), target)
			}
			expect(3, "encryption does not match", "backup", "-r", rec, "--to", url)

			// Rotate: a new recipients file; the next backup is sealed to it.
			newRecipients, newIdentity := ageKeys(dir, "rotated")
			appendWordsFrom(t, in, 5_000, 9_000_000, 2000, 5)
			wcRun(t, in, out, rec)
			expect(0, "base backup", "backup", "-r", rec, "--to", url, "--recipients-file", newRecipients)
			expect(0, "restored partitions", "restore", "--from", url, "--to", target, "--identity-file", newIdentity)
			// The restored partitions resume where the original ones are.
			saved := filepath.Join(dir, "out-before.csv")
			copyFile(t, out, saved)
			appendWordsFrom(t, in, 2_000, 9_500_000, 2000, 6)
			wcRun(t, in, out, rec)
			a, _ := os.ReadFile(out)
			copyFile(t, saved, out)
			wcRun(t, in, out, target)
			bb, _ := os.ReadFile(out)
			if diff := sameWordcountOutput(bb, a); len(a) == 0 || diff != "" {
				t.Fatalf("the restored run's output says other than the original's: %s (%d vs %d bytes)", diff, len(bb), len(a))
			}
			drillLog(t, began, "nothing (no plaintext in the bucket; exit 3 without a key, 1 with a wrong one; rotated keys restore)")
		})
	}
}
