package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// copyTree copies every file under src into dst (a bucket writer's
// upload of objects they made elsewhere).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "config.json" || strings.HasPrefix(rel, "latest") || strings.HasPrefix(rel, "locks") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755)
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Signed backups against a bucket writer without the signing key: they
// copy in newer backups of the same flow (unsigned, or signed with their
// own key). Restore with the trusted public key lays down only the genuine
// history; verify names the strays (exit 1); readers without trusted keys
// are told to give them (exit 3); an unsigned backup to the location is
// refused (exit 3).
func TestSigned_ABucketWriterWithoutTheKeyDecidesNothing(t *testing.T) {
	root := t.TempDir()
	rec := flowDir(t, "1h")
	bucketDir := filepath.Join(root, "bucket")
	bucket := "file://" + bucketDir
	key := filepath.Join(root, "keys", "signing.key")
	os.MkdirAll(filepath.Dir(key), 0o700)
	out := must(t, backupBin, "keygen", "--out", key)
	if !strings.Contains(out, "flowkeep-ed25519:") {
		t.Fatalf("keygen:\n%s", out)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("signing key mode: %v %v", st.Mode(), err)
	}
	if out, code := run(t, backupBin, "keygen", "--out", key); code != 3 || !strings.Contains(out, "exists") {
		t.Fatalf("keygen over an existing key: exit %d\n%s", code, out)
	}
	pub := key + ".pub"
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--signing-key", key)
	if cfg, _ := os.ReadFile(filepath.Join(bucketDir, "config.json")); !strings.Contains(string(cfg), `"signed":true`) {
		t.Fatalf("the location does not say it holds signed backups: %s", cfg)
	}

	// The attacker: a copy of the flow's partitions, run further, backed
	// up unsigned elsewhere and copied in; then again signed with their
	// own key.
	evilRec := filepath.Join(root, "evil-rec")
	os.MkdirAll(evilRec, 0o755)
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		b, _ := os.ReadFile(filepath.Join(rec, n))
		os.WriteFile(filepath.Join(evilRec, n), b, 0o644)
	}
	evilIn := filepath.Join(root, "evil.txt")
	os.WriteFile(evilIn, []byte("alpha beta gamma\nbeta gamma\nevil evil evil evil\n"), 0o644)
	must(t, flowrunBin, "run", "wordcount", "-i", evilIn, "-o", filepath.Join(root, "evil.csv"), "-r", evilRec, "-s", "1s", "-b", "1h")
	evilBucket := filepath.Join(root, "evil-bucket")
	must(t, backupBin, "backup", "-r", evilRec, "--to", "file://"+evilBucket)
	copyTree(t, evilBucket, bucketDir)
	evilKey := filepath.Join(root, "keys", "evil.key")
	must(t, backupBin, "keygen", "--out", evilKey)
	evilSigned := filepath.Join(root, "evil-signed")
	must(t, backupBin, "backup", "-r", evilRec, "--to", "file://"+evilSigned, "--signing-key", evilKey)
	copyTree(t, evilSigned, bucketDir)

	for _, args := range [][]string{
		{"restore", "--from", bucket, "--to", filepath.Join(root, "nokey")},
		{"verify", "--from", bucket, "--deep"},
		{"prune", "--from", bucket, "--keep-last", "1"},
	} {
		if out, code := run(t, backupBin, args...); code != 3 || !strings.Contains(out, "--trusted-keys") {
			t.Fatalf("%v without trusted keys: exit %d\n%s", args, code, out)
		}
	}
	v, code := run(t, backupBin, "verify", "--from", bucket, "--trusted-keys", pub)
	if code != 1 || !strings.Contains(v, "not signed, in a location of signed backups") || !strings.Contains(v, "which is not among the trusted keys") {
		t.Fatalf("verify with the trusted key: exit %d\n%s", code, v)
	}
	dst := filepath.Join(root, "restored")
	if rs := must(t, backupBin, "restore", "--from", bucket, "--to", dst, "--trusted-keys", pub); !strings.Contains(rs, "is not believed") {
		t.Fatalf("restore passed over the strays of the flow in silence:\n%s", rs)
	}
	// The genuine state never read evil.txt: continued over it, it reads
	// the whole file (the attacker's state had read all of it: nothing).
	cont := must(t, flowrunBin, "run", "wordcount", "-i", evilIn, "-o", "-", "-r", dst, "-s", "1s", "-b", "1h")
	if !strings.Contains(cont, "alpha,2") || !strings.Contains(cont, "evil,4") {
		t.Fatalf("the restored state is not the genuine one:\n%s", cont)
	}
	// Prune with the trusted key deletes no genuine backup for the strays.
	pr := must(t, backupBin, "prune", "--from", bucket, "--keep-last", "1", "--trusted-keys", pub)
	if !strings.Contains(pr, "deleted 0 backups") || !strings.Contains(pr, "ignored ") {
		t.Fatalf("prune:\n%s", pr)
	}
	// An unsigned backup to the signed location is refused.
	if out, code := run(t, backupBin, "backup", "-r", rec, "--to", bucket); code != 3 || !strings.Contains(out, "--signing-key") {
		t.Fatalf("an unsigned backup to a signed location: exit %d\n%s", code, out)
	}
	// A genuine manifest altered by a bucket writer (its sha256 fixed,
	// its signature now false) is named so by verify, and a restore that
	// passes over it, to the backup before it, says so.
	in := filepath.Join(filepath.Dir(rec), "in.txt")
	f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("delta epsilon\nzeta eta theta\n")
	f.Close()
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "1s", "-b", "1h")
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--signing-key", key)
	var genuine []string
	filepath.WalkDir(filepath.Join(bucketDir, "manifests"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(bucketDir, p)
			_, e1 := os.Stat(filepath.Join(evilBucket, rel))
			_, e2 := os.Stat(filepath.Join(evilSigned, rel))
			if os.IsNotExist(e1) && os.IsNotExist(e2) && strings.Contains(rel, "part-0001") {
				genuine = append(genuine, p)
			}
		}
		return nil
	})
	if len(genuine) < 2 {
		t.Fatalf("%d genuine signed manifests of partition 1, want 2", len(genuine))
	}
	sort.Strings(genuine)
	alterManifest(t, genuine[len(genuine)-1])
	v, _ = run(t, backupBin, "verify", "--from", bucket, "--trusted-keys", pub)
	if !strings.Contains(v, "its signature does not hold") {
		t.Fatalf("verify of a genuine manifest altered after it was signed:\n%s", v)
	}
	if rs, code := run(t, backupBin, "restore", "--from", bucket, "--to", filepath.Join(root, "restored-2"), "--trusted-keys", pub); code != 0 || !strings.Contains(rs, "its signature does not hold") {
		t.Fatalf("restore passed over an altered backup in silence: exit %d\n%s", code, rs)
	}
	// The newest genuine manifest deleted: the restore falls back, and
	// says the latest pointer names a backup whose manifest is gone.
	if err := os.Remove(genuine[len(genuine)-1]); err != nil {
		t.Fatal(err)
	}
	if rs, code := run(t, backupBin, "restore", "--from", bucket, "--to", filepath.Join(root, "restored-4"), "--trusted-keys", pub); code != 0 || !strings.Contains(rs, "whose manifest is not stored") {
		t.Fatalf("restore passed over a deleted newest backup in silence: exit %d\n%s", code, rs)
	}
	// Garbage a bucket writer leaves at config.json stops nothing: the
	// next signed backup decides from the manifests and writes a signed
	// config in its place; a restore with the trusted key goes on.
	if err := os.WriteFile(filepath.Join(bucketDir, "config.json"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, backupBin, "backup", "-r", rec, "--to", bucket, "--signing-key", key); code != 0 {
		t.Fatalf("a signed backup over a garbage config.json: exit %d\n%s", code, out)
	}
	if cfg, _ := os.ReadFile(filepath.Join(bucketDir, "config.json")); !strings.Contains(string(cfg), `"signed":true`) {
		t.Fatalf("the garbage config.json was not replaced: %s", cfg)
	}
	must(t, backupBin, "restore", "--from", bucket, "--to", filepath.Join(root, "restored-3"), "--trusted-keys", pub)
	// A quick verify without keys still works and says what it skipped.
	if out, _ := run(t, backupBin, "verify", "--from", bucket); !strings.Contains(out, "signatures were not checked") {
		t.Fatalf("quick verify without keys:\n%s", out)
	}
}

// Rotation: a trusted-keys file listing the old and the new public key
// believes backups of both.
func TestSigned_RotationListsTheOldAndTheNewKey(t *testing.T) {
	root := t.TempDir()
	rec := flowDir(t, "1h")
	bucket := "file://" + filepath.Join(root, "bucket")
	oldKey, newKey := filepath.Join(root, "old.key"), filepath.Join(root, "new.key")
	must(t, backupBin, "keygen", "--out", oldKey)
	must(t, backupBin, "keygen", "--out", newKey)
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--signing-key", oldKey)
	in := filepath.Join(filepath.Dir(rec), "in.txt")
	f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("delta epsilon\n")
	f.Close()
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "1s", "-b", "1h")
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--signing-key", newKey)
	both := filepath.Join(root, "trusted")
	a, _ := os.ReadFile(oldKey + ".pub")
	b, _ := os.ReadFile(newKey + ".pub")
	os.WriteFile(both, append(a, b...), 0o644)
	if out, code := run(t, backupBin, "verify", "--from", bucket, "--deep", "--trusted-keys", both); code != 0 {
		t.Fatalf("verify with both keys: exit %d\n%s", code, out)
	}
	// The new key alone restores the newest backups; the old ones are
	// strays to it.
	out := must(t, backupBin, "restore", "--from", bucket, "--to", filepath.Join(root, "r"), "--trusted-keys", newKey+".pub")
	if !strings.Contains(out, "restored partitions [0 1]") {
		t.Fatalf("restore with the new key:\n%s", out)
	}
}

// alterManifest changes the agent version a manifest file names and fixes its
// sha256, as a bucket writer could; a signature it carries no longer holds.
func alterManifest(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(b, &outer); err != nil {
		t.Fatal(err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, outer["manifest"]); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`"version":"[^"]*"`).ReplaceAll(compact.Bytes(), []byte(`"version":"altered"`))
	if bytes.Equal(m, compact.Bytes()) {
		t.Fatalf("%s names no agent version", path)
	}
	sum := sha256.Sum256(m)
	outer["manifest"] = m
	outer["sha256"], _ = json.Marshal(hex.EncodeToString(sum[:]))
	out, _ := json.Marshal(outer)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
