package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
)

// ageKeys writes a new age identity file and its recipients file.
func ageKeys(t *testing.T, dir string) (identity, recipients string) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	identity, recipients = filepath.Join(dir, "backup.agekey"), filepath.Join(dir, "backup.recipients")
	if err := os.WriteFile(identity, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(recipients, []byte(id.Recipient().String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return identity, recipients
}

// newestManifests returns each partition's newest manifest file in a
// file:// bucket.
func newestManifests(t *testing.T, bucketDir string) []string {
	t.Helper()
	parts, _ := filepath.Glob(filepath.Join(bucketDir, "manifests", "*", "part-*"))
	var out []string
	for _, p := range parts {
		ms, _ := filepath.Glob(filepath.Join(p, "*.json"))
		if len(ms) == 0 {
			t.Fatalf("no manifests in %s", p)
		}
		out = append(out, ms[len(ms)-1])
	}
	return out
}

// forgeIndexFile copies an encrypted manifest as a bucket writer without
// any key can: its index edited (a current id, epoch 999), its sha256
// recomputed, the sealed bytes kept.
func forgeIndexFile(t *testing.T, path string, at time.Time) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lf map[string]json.RawMessage
	var ix map[string]any
	if json.Unmarshal(b, &lf) != nil || json.Unmarshal(lf["index"], &ix) != nil {
		t.Fatalf("%s is not an encrypted manifest", path)
	}
	id := at.UTC().Format("20060102T150405.000Z") + "-0badf00d"
	ix["id"], ix["hi"] = id, 999
	idx, _ := json.Marshal(ix)
	var sealed []byte
	json.Unmarshal(lf["sealed"], &sealed)
	h := sha256.New()
	h.Write(idx)
	h.Write(sealed)
	lf["index"] = idx
	lf["sha256"], _ = json.Marshal(hex.EncodeToString(h.Sum(nil)))
	out, _ := json.Marshal(lf)
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), id+".json"), out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// An encrypted location (no signing) against a bucket writer who holds no
// key at all, not even a recipient's public key: they copy the newest
// manifests under current ids claiming epoch 999, plant a claim of a
// lineage of their own, and a plaintext latest pointer. None of it may
// decide anything: prune with the agent's recipients file deletes no
// genuine backup it should keep, and without a key refuses (exit 3);
// verify names the forgeries and not their epoch; the next backup is
// neither fenced nor stopped; restore lays down the genuine state.
func TestEncrypted_ABucketWriterWithoutAnyKeyDecidesNothing(t *testing.T) {
	root := t.TempDir()
	rec := flowDir(t, "1h")
	identity, recipients := ageKeys(t, root)
	bucketDir := filepath.Join(root, "bucket")
	bucket := "file://" + bucketDir
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--recipients-file", recipients)
	more := filepath.Join(root, "more.txt")
	os.WriteFile(more, []byte("alpha delta\n"), 0o644)
	must(t, flowrunBin, "run", "wordcount", "-i", more, "-o", filepath.Join(root, "more.csv"), "-r", rec, "-s", "1s", "-b", "1h")
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--recipients-file", recipients)

	// The attacker's work.
	now := time.Now()
	for i, m := range newestManifests(t, bucketDir) {
		forgeIndexFile(t, m, now.Add(time.Duration(i+1)*time.Second))
	}
	flows, _ := filepath.Glob(filepath.Join(bucketDir, "manifests", "*"))
	uid := filepath.Base(flows[0])
	at := now.UTC().Truncate(time.Millisecond)
	ev, _ := json.Marshal(map[string]any{"kind": "claim", "flow": uid, "id": "0123456789abcdef", "at": at})
	sum := sha256.Sum256(ev)
	claim, _ := json.Marshal(map[string]any{"event": json.RawMessage(ev), "sha256": hex.EncodeToString(sum[:])})
	claimDir := filepath.Join(bucketDir, "lineages", uid, "0123456789abcdef")
	os.MkdirAll(claimDir, 0o755)
	os.WriteFile(filepath.Join(claimDir, fmt.Sprintf("claim-%s-0badf00d.json", at.Format("20060102T150405.000Z"))), claim, 0o644)
	plainDir := filepath.Join(root, "plain")
	must(t, backupBin, "backup", "-r", rec, "--to", "file://"+plainDir)
	pointers, _ := filepath.Glob(filepath.Join(plainDir, "latest", uid, "*"))
	for _, p := range pointers {
		b, _ := os.ReadFile(p)
		os.WriteFile(filepath.Join(bucketDir, "latest", uid, filepath.Base(p)), b, 0o644)
	}

	if out, code := run(t, backupBin, "prune", "--from", bucket, "--keep-last", "1"); code != 3 || !strings.Contains(out, "--recipients-file") {
		t.Fatalf("prune without a key: exit %d\n%s", code, out)
	}
	if out, _ := run(t, backupBin, "verify", "--from", bucket); !strings.Contains(out, "not authenticated") {
		t.Fatalf("quick verify without a key must say it could not authenticate:\n%s", out)
	}
	v, code := run(t, backupBin, "verify", "--from", bucket, "--recipients-file", recipients, "--json")
	if code != 1 || !strings.Contains(v, "not tagged under any recipient") || strings.Contains(v, `"restorable_epoch": 999`) {
		t.Fatalf("verify with the recipients: exit %d\n%s", code, v)
	}
	// The agent's next backup: not fenced by the forged claim, not stopped
	// by the plaintext pointers.
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--recipients-file", recipients, "--even-unchanged")
	pr := must(t, backupBin, "prune", "--from", bucket, "--keep-last", "1", "--recipients-file", recipients)
	if !strings.Contains(pr, "deleted 4 backups") || strings.Count(pr, "ignored ") != 2 {
		t.Fatalf("prune with the recipients: want the 4 older genuine backups deleted and the 2 forgeries ignored:\n%s", pr)
	}
	dst := filepath.Join(root, "restored")
	must(t, backupBin, "restore", "--from", bucket, "--to", dst, "--identity-file", identity)
	again := filepath.Join(root, "again.txt")
	os.WriteFile(again, []byte("alpha delta\n"), 0o644)
	cont := must(t, flowrunBin, "run", "wordcount", "-i", again, "-o", "-", "-r", dst, "-s", "1s", "-b", "1h")
	if !strings.Contains(cont, "alpha,3") || !strings.Contains(cont, "delta,2") {
		t.Fatalf("the restored state is not the genuine one (alpha 1+1+1, delta 1+1):\n%s", cont)
	}
}

// config.json is plaintext: a bucket writer with no key can rewrite it.
// Where the backups are encrypted or signed, writers and readers holding
// the keys believe only a config their keys authenticate: a forged one
// neither stops the backups nor turns the genuine backups into strays,
// and the next backup writes an authenticated one in its place.
func TestLocation_AForgedConfigDecidesNothing(t *testing.T) {
	root := t.TempDir()
	identity, recipients := ageKeys(t, root)
	signing := filepath.Join(root, "signing.key")
	must(t, backupBin, "keygen", "--out", signing)
	for _, c := range []struct {
		name   string
		write  []string // backup's keys
		read   []string // restore's keys
		forged string
	}{
		{"encrypted forged to say signed", []string{"--recipients-file", recipients}, []string{"--identity-file", identity},
			`{"format":"flowkeep-repo/1","encryption":"age","created":"2026-01-01T00:00:00Z","signed":true}`},
		{"signed forged to say encrypted", []string{"--signing-key", signing}, []string{"--trusted-keys", signing + ".pub"},
			`{"format":"flowkeep-repo/1","encryption":"age","created":"2026-01-01T00:00:00Z","signed":true}`},
		{"encrypted forged to say plaintext", []string{"--recipients-file", recipients}, []string{"--identity-file", identity},
			`{"format":"flowkeep-repo/1","encryption":"none","created":"2026-01-01T00:00:00Z"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := flowDir(t, "1h")
			bucketDir := filepath.Join(t.TempDir(), "bucket")
			bucket := "file://" + bucketDir
			must(t, backupBin, append([]string{"backup", "-r", rec, "--to", bucket}, c.write...)...)
			cfg := filepath.Join(bucketDir, "config.json")
			if err := os.WriteFile(cfg, []byte(c.forged), 0o644); err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(t.TempDir(), "restored")
			if out, code := run(t, backupBin, append([]string{"restore", "--from", bucket, "--to", dst}, c.read...)...); code != 0 {
				t.Fatalf("restore with the keys after the config was forged: exit %d\n%s", code, out)
			}
			if out, code := run(t, backupBin, append([]string{"backup", "-r", rec, "--to", bucket, "--even-unchanged"}, c.write...)...); code != 0 {
				t.Fatalf("backup with the keys after the config was forged: exit %d\n%s", code, out)
			}
			if b, _ := os.ReadFile(cfg); string(b) == c.forged || !strings.Contains(string(b), `"sig"`) && !strings.Contains(string(b), `"auth"`) {
				t.Fatalf("the backup did not write an authenticated config in place of the forged one: %s", b)
			}
		})
	}
}

// In an encrypted location heartbeats are tagged for the recipients: a
// heartbeat someone without the keys writes (to hide that backups stopped)
// does not count in verify --max-age with the recipients given, a genuine
// one does.
func TestEncrypted_AForgedHeartbeatHidesNoStall(t *testing.T) {
	root := t.TempDir()
	rec := flowDir(t, "1h")
	_, recipients := ageKeys(t, root)
	bucketDir := filepath.Join(root, "bucket")
	bucket := "file://" + bucketDir
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--recipients-file", recipients)
	time.Sleep(2500 * time.Millisecond)
	// The genuine heartbeat: an unchanged flow, backed up again.
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--recipients-file", recipients)
	if out, code := run(t, backupBin, "verify", "--from", bucket, "--recipients-file", recipients, "--max-age", "2s"); code != 0 {
		t.Fatalf("verify --max-age 2s just after a genuine heartbeat: exit %d\n%s", code, out)
	}
	time.Sleep(2500 * time.Millisecond)
	if out, code := run(t, backupBin, "verify", "--from", bucket, "--recipients-file", recipients, "--max-age", "2s"); code != 1 || !strings.Contains(out, "falling behind") {
		t.Fatalf("verify --max-age 2s with the heartbeat 2.5s old: exit %d\n%s", code, out)
	}
	// Forged heartbeats: fresh, well formed, untagged.
	var forged int
	filepath.WalkDir(filepath.Join(bucketDir, "heartbeats"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		var st struct {
			Heartbeat json.RawMessage `json:"heartbeat"`
		}
		b, _ := os.ReadFile(p)
		if json.Unmarshal(b, &st) != nil {
			return nil
		}
		var hb map[string]any
		json.Unmarshal(st.Heartbeat, &hb)
		hb["checked"] = time.Now().UTC().Format(time.RFC3339Nano)
		body, _ := json.Marshal(hb)
		sum := sha256.Sum256(body)
		out, _ := json.Marshal(map[string]any{"heartbeat": json.RawMessage(body), "sha256": hex.EncodeToString(sum[:])})
		os.WriteFile(p, out, 0o644)
		forged++
		return nil
	})
	if forged == 0 {
		t.Fatal("no heartbeat to forge")
	}
	if out, code := run(t, backupBin, "verify", "--from", bucket, "--recipients-file", recipients, "--max-age", "2s"); code != 1 || !strings.Contains(out, "falling behind") {
		t.Fatalf("verify --max-age 2s with forged fresh heartbeats: exit %d\n%s", code, out)
	}
}
