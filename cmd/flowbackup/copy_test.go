package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// copyReport is flowbackup copy --json.
type copyReport struct {
	CopiedObjects  int64 `json:"copied_objects"`
	CopiedBytes    int64 `json:"copied_bytes"`
	CopiedBackups  int   `json:"copied_backups"`
	SkippedObjects int64 `json:"skipped_objects"`
	SkippedBackups int   `json:"skipped_backups"`
	NotCopied      []struct {
		Key, Kind, Reason string
	} `json:"not_copied"`
}

func copyJSON(t *testing.T, env []string, args ...string) copyReport {
	t.Helper()
	out, code := runEnv(t, env, append([]string{"copy", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("copy %v: exit %d\n%s", args, code, out)
	}
	var r copyReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("copy --json: %v\n%s", err, out)
	}
	return r
}

// totals reads a wordcount output file: each word's last count.
func totals(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		w, c, _ := strings.Cut(l, ",")
		m[w] = c
	}
	return m
}

// movedFlow is a 2-partition wordcount flow backed up twice into bucket
// (a base and a delta per partition); it returns the recovery directory,
// the input and the output file.
func movedFlow(t *testing.T, env []string, bucket string) (rec, in, out string) {
	t.Helper()
	rec = flowDir(t, "1h")
	dir := filepath.Dir(rec)
	in, out = filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	if o, code := runEnv(t, env, "backup", "-r", rec, "--to", bucket); code != 0 {
		t.Fatalf("backup: exit %d\n%s", code, o)
	}
	f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("delta epsilon alpha\n")
	f.Close()
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "1h")
	if o, code := runEnv(t, env, "backup", "-r", rec, "--to", bucket); code != 0 {
		t.Fatalf("backup: exit %d\n%s", code, o)
	}
	return rec, in, out
}

// restoresLikeTheOriginal restores from bucket (with the reader's env),
// continues the flow over more input, and checks its totals are those of
// one run over all of it.
func restoresLikeTheOriginal(t *testing.T, env []string, bucket, in, out string) {
	t.Helper()
	root := t.TempDir()
	dst := filepath.Join(root, "restored")
	if o, code := runEnv(t, env, "restore", "--from", bucket, "--to", dst); code != 0 || !strings.Contains(o, "restored partitions [0 1]") {
		t.Fatalf("restore --from the copy: exit %d\n%s", code, o)
	}
	all := filepath.Join(root, "in.txt")
	b, _ := os.ReadFile(in)
	os.WriteFile(all, append(b, "zeta alpha beta\n"...), 0o644)
	// The restored state read in.txt this far; it goes on over a copy of
	// the input (as on a new machine) and writes a copy of the output.
	cont := filepath.Join(root, "out.csv")
	ob, _ := os.ReadFile(out)
	os.WriteFile(cont, ob, 0o644)
	must(t, flowrunBin, "run", "wordcount", "-i", all, "-o", cont, "-r", dst, "-s", "1s", "-b", "1h")
	one := filepath.Join(root, "one.csv")
	must(t, flowrunBin, "run", "wordcount", "-i", all, "-o", one)
	if got, want := totals(t, cont), totals(t, one); fmt.Sprint(got) != fmt.Sprint(want) || want["alpha"] != "3" || want["zeta"] != "1" {
		t.Fatalf("restored from the copy and continued: %v; one run over the input: %v", got, want)
	}
}

// A copy is complete (B verifies deep and healthy, restores, and the
// continued flow's totals are exact), incremental (a second copy moves 0
// objects and 0 bytes), prunable on its own, and reports what it copied.
func TestCopy_CompleteIncrementalRestorable(t *testing.T) {
	root := t.TempDir()
	a, b := "file://"+filepath.Join(root, "a"), "file://"+filepath.Join(root, "b")
	_, in, out := movedFlow(t, nil, a)
	first := copyJSON(t, nil, "--from", a, "--to", b)
	if first.CopiedBackups != 4 || first.CopiedObjects == 0 || first.CopiedBytes == 0 || len(first.NotCopied) != 0 {
		t.Fatalf("first copy: %+v", first)
	}
	if v := must(t, backupBin, "verify", "--from", b, "--deep"); !strings.Contains(v, "healthy") || !strings.Contains(v, "4 of 4 backups healthy") {
		t.Fatalf("verify --deep of the copy:\n%s", v)
	}
	again := copyJSON(t, nil, "--from", a, "--to", b)
	if again.CopiedObjects != 0 || again.CopiedBytes != 0 || again.SkippedBackups != 4 {
		t.Fatalf("second copy: %+v", again)
	}
	restoresLikeTheOriginal(t, nil, b, in, out)
	// Each location is pruned by its own policy: the copy keeps one backup
	// per partition and still verifies; the source keeps all of its own.
	if p := must(t, backupBin, "prune", "--from", b, "--keep-last", "1"); !strings.Contains(p, "deleted 2 backups") {
		t.Fatalf("prune --from the copy:\n%s", p)
	}
	must(t, backupBin, "verify", "--from", b, "--deep")
	if n := manifests(filepath.Join(root, "a")); n != 4 {
		t.Fatalf("the source holds %d backups after the copy was pruned, want 4", n)
	}
	// After the prune the copy lacks what it pruned: copying again brings
	// only those (they are not pruned in the source).
	if r := copyJSON(t, nil, "--from", a, "--to", b); r.CopiedBackups != 2 {
		t.Fatalf("copy after pruning the copy: %+v", r)
	}
	// The human report.
	if o := must(t, backupBin, "copy", "--from", a, "--to", b); !strings.Contains(o, "copied 0 backups (0 objects, 0 B)") {
		t.Fatalf("copy:\n%s", o)
	}
	if o, code := run(t, backupBin, "copy", "--from", a, "--to", a); code != 3 || !strings.Contains(o, "the same location") {
		t.Fatalf("copy onto itself: exit %d\n%s", code, o)
	}
	// --flow names a flow of the source, by name or uid; a typo is exit 3.
	c := "file://" + filepath.Join(root, "c")
	if o, code := run(t, backupBin, "copy", "--from", a, "--to", c, "--flow", "wordcuont"); code != 3 || !strings.Contains(o, `no flow "wordcuont"`) {
		t.Fatalf("copy --flow with a typo: exit %d\n%s", code, o)
	}
	if r := copyJSON(t, nil, "--from", a, "--to", c, "--flow", "wordcount"); r.CopiedBackups != 4 {
		t.Fatalf("copy --flow wordcount: %+v", r)
	}
	// In the config file every subcommand shares, url (or the agent's to)
	// is what copy copies; its destination is copy.to.
	cfg := filepath.Join(root, "flowbackup.yaml")
	os.WriteFile(cfg, []byte("to: "+a+"\ncopy:\n  to: file://"+filepath.Join(root, "d")+"\n"), 0o644)
	if r := copyJSON(t, nil, "--config", cfg); r.CopiedBackups != 4 {
		t.Fatalf("copy --config: %+v", r)
	}
}

// Encrypted and signed backups are copied with no key at all, byte for
// byte: the copy verifies deep and restores with the keys. A destination
// holding backups of another scheme is refused (exit 3) and left as it
// was.
func TestCopy_EncryptedAndSignedWithoutAKey(t *testing.T) {
	root := t.TempDir()
	identity, recipients := ageKeys(t, root)
	key := filepath.Join(root, "signing.key")
	must(t, backupBin, "keygen", "--out", key)
	writer := []string{"FLOWBACKUP_RECIPIENTS_FILE=" + recipients, "FLOWBACKUP_SIGNING_KEY=" + key}
	reader := []string{"FLOWBACKUP_IDENTITY_FILE=" + identity, "FLOWBACKUP_TRUSTED_KEYS=" + key + ".pub"}
	a, b := "file://"+filepath.Join(root, "a"), "file://"+filepath.Join(root, "b")
	_, in, out := movedFlow(t, writer, a)
	if r := copyJSON(t, nil, "--from", a, "--to", b); r.CopiedBackups != 4 {
		t.Fatalf("copy without a key: %+v", r)
	}
	cfg, _ := os.ReadFile(filepath.Join(root, "b", "config.json"))
	if !strings.Contains(string(cfg), `"encryption":"age"`) || !strings.Contains(string(cfg), `"signed":true`) {
		t.Fatalf("the copy's config: %s", cfg)
	}
	if v, code := runEnv(t, reader, "verify", "--from", b, "--deep"); code != 0 || !strings.Contains(v, "4 of 4 backups healthy") {
		t.Fatalf("verify --deep of the copy with the keys: exit %d\n%s", code, v)
	}
	restoresLikeTheOriginal(t, reader, b, in, out)

	// Destinations of another scheme.
	plain := "file://" + filepath.Join(root, "plain")
	movedFlow(t, nil, plain)
	signedOnly := "file://" + filepath.Join(root, "signed")
	movedFlow(t, []string{"FLOWBACKUP_SIGNING_KEY=" + key}, signedOnly)
	for _, c := range []struct{ from, to, says string }{
		{a, plain, "encryption does not match"},
		{plain, b, "encryption does not match"},
		{signedOnly, plain, "signed"},
		{plain, signedOnly, "signed"},
	} {
		before := tree(t, strings.TrimPrefix(c.to, "file://"))
		if o, code := run(t, backupBin, "copy", "--from", c.from, "--to", c.to); code != 3 || !strings.Contains(o, c.says) {
			t.Fatalf("copy %s -> %s: exit %d\n%s", c.from, c.to, code, o)
		}
		if after := tree(t, strings.TrimPrefix(c.to, "file://")); after != before {
			t.Fatalf("a refused copy changed %s", c.to)
		}
	}
	// An agent whose --copy-to holds backups of another scheme does not
	// start.
	rec := flowDir(t, "1h")
	if o, code := runEnv(t, writer, "agent", "-r", rec, "--to", a, "--schedule", "@every 1h", "--copy-to", plain); code != 3 || !strings.Contains(o, "encryption does not match") {
		t.Fatalf("agent --copy-to a plaintext location: exit %d\n%s", code, o)
	}
}

// tree lists the files under dir with their sizes.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			fmt.Fprintf(&b, "%s %d\n", p, info.Size())
		}
		return nil
	})
	return b.String()
}

// agentProc is a running flowbackup agent: its log lines and metrics.
type agentProc struct {
	cmd   *exec.Cmd
	lines chan string
	addr  string
	log   strings.Builder
}

func startAgent(t *testing.T, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(backupBin, append([]string{"agent", "--metrics-addr", "127.0.0.1:0"}, args...)...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, lines: make(chan string, 1000)}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	p.waitLog(t, `serving metrics`)
	return p
}

// waitLog waits for a log line matching re and returns it.
func (p *agentProc) waitLog(t *testing.T, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("agent exited waiting for %q:\n%s", re, p.log.String())
			}
			p.log.WriteString(l + "\n")
			if m := regexp.MustCompile(`serving metrics"? addr=(\S+)`).FindStringSubmatch(l); m != nil {
				p.addr = m[1]
			}
			if rx.MatchString(l) {
				return l
			}
		case <-deadline:
			t.Fatalf("no log line %q in 60s:\n%s", re, p.log.String())
		}
	}
}

// metric returns the value of the series named exactly (name{labels}).
func (p *agentProc) metric(t *testing.T, series string) (float64, bool) {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f, true
		}
	}
	return 0, false
}

// waitMetric polls until cond holds for the series' value.
func (p *agentProc) waitMetric(t *testing.T, series string, cond func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		v, ok := p.metric(t, series)
		if ok && cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v (present %v) after 60s; log:\n%s", series, v, ok, p.log.String())
		}
		p.drain()
		time.Sleep(200 * time.Millisecond)
	}
}

// drain keeps the log lines read so far.
func (p *agentProc) drain() {
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return
			}
			p.log.WriteString(l + "\n")
		default:
			return
		}
	}
}

// manifests counts the manifest files in a file:// bucket.
func manifests(bucketDir string) int {
	ms, _ := filepath.Glob(filepath.Join(bucketDir, "manifests", "*", "part-*", "*.json"))
	return len(ms)
}

// The agent copies each new backup to --copy-to once it has landed, and
// exports the copy's lag: 0 while the copy keeps up; growing, with the
// failures counted, while it cannot (a copy location of another scheme),
// without failing the backups.
func TestAgent_CopyToFollowsTheBackups(t *testing.T) {
	rec := flowDir(t, "1h")
	root := t.TempDir()
	aDir, bDir := filepath.Join(root, "a"), filepath.Join(root, "b")
	a, b := "file://"+aDir, "file://"+bDir
	p := startAgent(t, "-r", rec, "--to", a, "--schedule", "@every 1s", "--copy-to", b)
	lag := `flowkeep_copy_lag_seconds{to="` + b + `"}`
	p.waitLog(t, `msg=copied .*backups=2`)
	if n := manifests(bDir); n != 2 {
		t.Fatalf("the copy holds %d backups, want 2", n)
	}
	p.waitMetric(t, lag, func(v float64) bool { return v == 0 })
	p.waitMetric(t, `flowkeep_copy_last_success_timestamp_seconds{to="`+b+`"}`, func(v float64) bool { return v > 0 })

	// The flow moves: its next backups reach the copy.
	in := filepath.Join(filepath.Dir(rec), "in.txt")
	f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("delta epsilon\n")
	f.Close()
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "1s", "-b", "1h")
	p.waitLog(t, `msg=copied .*backups=[12]`)
	deadline := time.Now().Add(30 * time.Second)
	for manifests(bDir) < 4 || manifests(bDir) != manifests(aDir) {
		if time.Now().After(deadline) {
			t.Fatalf("the copy holds %d backups, the source %d", manifests(bDir), manifests(aDir))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v := must(t, backupBin, "verify", "--from", b, "--deep"); !strings.Contains(v, "healthy") {
		t.Fatalf("verify --deep of the agent's copy:\n%s", v)
	}

	// The copy location turns into one of another scheme: copies fail,
	// are counted, and the lag grows from the first backup it lacks;
	// backups go on.
	os.WriteFile(filepath.Join(bDir, "config.json"), []byte(`{"format":"flowkeep-repo/1","encryption":"age","created":"2026-01-01T00:00:00Z"}`), 0o644)
	f, _ = os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("zeta\n")
	f.Close()
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "1s", "-b", "1h")
	p.waitMetric(t, `flowkeep_copy_failures_total{to="`+b+`"}`, func(v float64) bool { return v >= 1 })
	p.waitMetric(t, lag, func(v float64) bool { return v >= 2 })
	before := manifests(aDir)
	f, _ = os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("eta\n")
	f.Close()
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "1s", "-b", "1h")
	for manifests(aDir) == before {
		if time.Now().After(deadline.Add(60 * time.Second)) {
			t.Fatal("backups stopped while the copy failed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v, _ := p.metric(t, `flowkeep_backup_failures_total{flow="wordcount",partition="all"}`); v != 0 {
		t.Fatalf("a failed copy failed a backup run: failures_total = %v", v)
	}
}

// A scheduled audit exports its outcome: healthy at first; a chunk
// damaged in the store makes flowkeep_verify_problems > 0, and the audit
// writes nothing into the location.
func TestAgent_VerifySchedule(t *testing.T) {
	rec := flowDir(t, "1h")
	bucketDir := filepath.Join(t.TempDir(), "bucket")
	bucket := "file://" + bucketDir
	p := startAgent(t, "-r", rec, "--to", bucket, "--schedule", "@every 1h", "--verify-schedule", "@every 1s", "--sample", "100")
	p.waitLog(t, `audits scheduled.*sample_percent=100`)
	if v, ok := p.metric(t, "flowkeep_verify_schedule_period_seconds"); !ok || v != 1 {
		t.Fatalf("flowkeep_verify_schedule_period_seconds = %v, %v", v, ok)
	}
	p.waitMetric(t, "flowkeep_verify_last_success_timestamp_seconds", func(v float64) bool { return v > 0 })
	if v, _ := p.metric(t, "flowkeep_verify_problems"); v != 0 {
		t.Fatalf("problems of a healthy location: %v", v)
	}
	chunks, _ := filepath.Glob(filepath.Join(bucketDir, "chunks", "*", "*"))
	if len(chunks) == 0 {
		t.Fatal("no chunks")
	}
	b, _ := os.ReadFile(chunks[0])
	b[len(b)/2] ^= 0x40
	os.WriteFile(chunks[0], b, 0o644)
	p.waitMetric(t, "flowkeep_verify_problems", func(v float64) bool { return v > 0 })
	p.waitLog(t, `audit problem.*`+regexp.QuoteMeta(filepath.Base(chunks[0])[:12]))
	if q, _ := filepath.Glob(filepath.Join(bucketDir, "quarantine", "*")); len(q) != 0 {
		t.Fatalf("the audit quarantined %v: it must write nothing", q)
	}
}
