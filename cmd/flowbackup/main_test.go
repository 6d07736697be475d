package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var flowrunBin, backupBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flowbackup-test")
	if err != nil {
		panic(err)
	}
	flowrunBin, backupBin = filepath.Join(dir, "flowrun"), filepath.Join(dir, "flowbackup")
	for bin, pkg := range map[string]string{flowrunBin: "../flowrun", backupBin: "."} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			panic(fmt.Sprintf("build %s: %v\n%s", pkg, err, out))
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

func must(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, code := run(t, bin, args...)
	if code != 0 {
		t.Fatalf("%s %v: exit %d\n%s", filepath.Base(bin), args, code, out)
	}
	return out
}

// flowDir runs wordcount once into a fresh recovery directory.
func flowDir(t *testing.T, b string) string {
	t.Helper()
	dir := t.TempDir()
	rec := filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	must(t, flowrunBin, "recovery", "init", rec, "2")
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("alpha beta gamma\nbeta gamma\n"), 0o644)
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(dir, "out.csv"), "-r", rec, "-s", "1s", "-b", b)
	return rec
}

func TestCLI_BadInputExitsThreeAndWritesNothing(t *testing.T) {
	rec := flowDir(t, "5s")
	bucket := t.TempDir()
	to := "file://" + bucket
	other := t.TempDir()
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"bad URL", []string{"backup", "-r", rec, "--to", "::not a url"}, "bad storage URL"},
		{"unknown scheme", []string{"backup", "-r", rec, "--to", "ftp://host/x"}, `unknown storage scheme "ftp"`},
		{"relative file URL", []string{"backup", "-r", rec, "--to", "file://relative/path"}, "file URL has no host"},
		{"missing bucket", []string{"list", "--from", "file://" + filepath.Join(bucket, "nope")}, "does not exist"},
		{"empty recovery dir", []string{"backup", "-r", other, "--to", to}, "no recovery partitions"},
		{"missing recovery dir", []string{"backup", "-r", filepath.Join(other, "x"), "--to", to}, "no such file"},
		{"no -r", []string{"backup", "--to", to}, "-r is required"},
		{"invalid cron", []string{"agent", "-r", rec, "--to", to, "--schedule", "every so often"}, "invalid schedule"},
		{"bad flag", []string{"list", "--bogus"}, "unknown flag"},
		{"keep-last 0", []string{"prune", "--from", to, "--keep-last", "0"}, "give at least one retention rule"},
		{"negative keep-daily", []string{"prune", "--from", to, "--keep-daily", "-1"}, "keep-daily must not be negative"},
		{"bad keep-tag", []string{"prune", "--from", to, "--keep-tag", "two words"}, `tag "two words"`},
		{"bad backup tag", []string{"backup", "-r", rec, "--to", to, "--tag", "a/b"}, `tag "a/b"`},
		{"partition out of range", []string{"backup", "-r", rec, "--to", to, "--partitions", "7"}, "partitions [7] are not in"},
		{"sample out of range", []string{"verify", "--from", to, "--sample", "150"}, "--sample must be a percentage"},
		{"memory below one chunk", []string{"backup", "-r", rec, "--to", to, "--memory", "1MiB"}, "--memory: memory budget 1 MiB is too small"},
		{"memory not a size", []string{"restore", "--from", to, "--to", other, "--memory", "lots"}, "size \"lots\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, backupBin, tt.args...)
			if code != 3 || !strings.Contains(out, tt.msg) {
				t.Fatalf("exit %d, output:\n%s\nwant exit 3 and %q", code, out, tt.msg)
			}
		})
	}
	if ents, _ := os.ReadDir(bucket); len(ents) != 0 {
		t.Fatalf("refused commands wrote %d entries into the bucket", len(ents))
	}
}

func TestCLI_ForeignDirectoryRefused(t *testing.T) {
	a, b := flowDir(t, "5s"), flowDir(t, "5s")
	data, _ := os.ReadFile(filepath.Join(b, "part-0.sqlite3"))
	os.WriteFile(filepath.Join(a, "stray.sqlite3"), data, 0o644)
	out, code := run(t, backupBin, "backup", "-r", a, "--to", "file://"+t.TempDir())
	if code != 3 || !strings.Contains(out, "another flow") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestCLI_BackupListVerifyRestorePrune(t *testing.T) {
	rec := flowDir(t, "5s")
	to := "file://" + t.TempDir()
	must(t, backupBin, "backup", "-r", rec, "--to", to)
	// A one-shot backup skips partitions that did not move, as the agent
	// does; --even-unchanged takes them anyway.
	if again := must(t, backupBin, "backup", "-r", rec, "--to", to); strings.Count(again, "skipped (unchanged)") != 2 {
		t.Fatalf("second backup of an idle flow:\n%s", again)
	}
	must(t, backupBin, "backup", "-r", rec, "--to", to, "--even-unchanged")
	list := must(t, backupBin, "list", "--from", to)
	if strings.Count(list, " base ") != 2 || strings.Count(list, " delta ") != 2 || !strings.Contains(list, "restorable to epoch 2") {
		t.Fatalf("list:\n%s", list)
	}
	js := must(t, backupBin, "list", "--from", to, "--json")
	if !strings.Contains(js, `"overlap_epoch": 2`) {
		t.Fatalf("list --json:\n%s", js)
	}
	v := must(t, backupBin, "verify", "--from", to, "--json")
	if !strings.Contains(v, `"status": "healthy"`) || !strings.Contains(v, `"restorable_epoch": 2`) {
		t.Fatalf("verify --json:\n%s", v)
	}
	dry := must(t, backupBin, "restore", "--from", to, "--to", filepath.Join(t.TempDir(), "x"), "--dry-run")
	if !strings.Contains(dry, "would restore partitions [0 1] of 2 at epoch 2") {
		t.Fatalf("dry run:\n%s", dry)
	}
	// A grace shorter than a backup's lock could delete what a running
	// backup just uploaded: refused, as a usage error.
	if out, code := run(t, backupBin, "prune", "--from", to, "--keep-last", "1", "--grace", "0s"); code != 3 || !strings.Contains(out, "lock TTL") {
		t.Fatalf("prune --grace 0s: exit %d\n%s", code, out)
	}
	pr := must(t, backupBin, "prune", "--from", to, "--keep-last", "1")
	if !strings.Contains(pr, "deleted 2 backups") {
		t.Fatalf("prune:\n%s", pr)
	}
	// The kept delta still restores: its base's chunks were kept; deep
	// verify reads each object once and says so.
	if v := must(t, backupBin, "verify", "--from", to, "--deep"); !regexp.MustCompile(`read \d+ objects?, [0-9.]+ KiB of the [0-9.]+ KiB the checked backups store`).MatchString(v) {
		t.Fatalf("verify --deep does not say what it read:\n%s", v)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	must(t, backupBin, "restore", "--from", to, "--to", dst)
	out, code := run(t, backupBin, "restore", "--from", to, "--to", dst)
	if code == 0 || !strings.Contains(out, "--force") {
		t.Fatalf("second restore into the same dir: exit %d\n%s", code, out)
	}
}

func TestAgent_MetricsWarningAndConfigFile(t *testing.T) {
	rec := flowDir(t, "1s") // -b 1s: a 1-minute schedule is too sparse
	to := "file://" + t.TempDir()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("recovery_dir: %s\nto: %s\nschedule: \"@every 1m\"\nmetrics_addr: 127.0.0.1:0\n", rec, to)), 0o644)
	cmd := exec.Command(backupBin, "agent", "--config", cfg)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var addr string
	warned, backedUp := false, 0
	deadline := time.After(20 * time.Second)
	for addr == "" || !warned || backedUp < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("agent exited")
			}
			if m := regexp.MustCompile(`serving metrics"? addr=(\S+)`).FindStringSubmatch(l); m != nil {
				addr = m[1]
			}
			warned = warned || strings.Contains(l, "WARNING") && strings.Contains(l, "may not overlap")
			if strings.Contains(l, "backed up") {
				backedUp++
			}
		case <-deadline:
			t.Fatalf("agent: addr %q, warned %v, %d backups", addr, warned, backedUp)
		}
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`flowkeep_backup_last_success_timestamp_seconds{flow="wordcount",partition="0"}`,
		`flowkeep_backup_last_success_timestamp_seconds{flow="wordcount",partition="1"}`,
		`flowkeep_backup_uploaded_bytes_total{flow="wordcount",partition="0"}`,
		`flowkeep_backup_uploaded_objects_total{flow="wordcount",partition="1"}`,
		`flowkeep_backup_duration_seconds_count{flow="wordcount",partition="0"} 1`,
		`flowkeep_backup_schedule_exceeds_backup_interval 1`,
		`flowkeep_backup_restorable_epoch{flow="wordcount",partition="0"} 2`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// Backups written before schema version 2 (testdata/v1/bucket: a base and a
// delta over it) still restore; the restored flow continues exactly where
// the backup stood.
func TestCLI_RestoresSchemaV1Backups(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-r", "../../testdata/v1/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	from := "file://" + filepath.Join(dir, "bucket")
	if v := must(t, backupBin, "verify", "--from", from, "--deep"); !strings.Contains(v, "restorable to epoch 5") {
		t.Fatalf("verify:\n%s", v)
	}
	rec := filepath.Join(dir, "restored")
	if r := must(t, backupBin, "restore", "--from", from, "--to", rec); !strings.Contains(r, "at epoch 5") {
		t.Fatalf("restore:\n%s", r)
	}
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	more, _ := os.ReadFile(filepath.Join(dir, "more.txt"))
	f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.Write(more)
	f.Close()
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "2s")
	one := filepath.Join(dir, "one.csv")
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", one)
	totals := func(p string) map[string]string {
		b, _ := os.ReadFile(p)
		m := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			w, c, _ := strings.Cut(l, ",")
			m[w] = c
		}
		return m
	}
	if got, want := totals(out), totals(one); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored and continued: %d words, one run: %d", len(got), len(want))
	}
}

// When one host's backups trail another's, list says which partitions are
// behind the newest and by how much (a restore can only pick an epoch all
// partitions have).
func TestCLI_ListShowsPartitionsThatTrail(t *testing.T) {
	rec := flowDir(t, "5s")
	to := "file://" + t.TempDir()
	must(t, backupBin, "backup", "-r", rec, "--to", to)
	in := filepath.Join(filepath.Dir(rec), "in.txt")
	f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("delta epsilon\n")
	f.Close()
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "1s", "-b", "5s")
	must(t, backupBin, "backup", "-r", rec, "--to", to, "--partitions", "1")
	list := must(t, backupBin, "list", "--from", to)
	re := regexp.MustCompile(`part 0\s+epoch (\d+) \([^)]*\)\s+(\d+) epochs? \([^)]*\) behind the newest`)
	m := re.FindStringSubmatch(list)
	if m == nil || strings.Contains(regexp.MustCompile(`part 1\s+epoch.*`).FindString(list), "behind") {
		t.Fatalf("list does not show partition 0 alone behind:\n%s", list)
	}
	var js struct {
		Flows []struct {
			Newest []struct {
				Partition    int    `json:"partition"`
				Epoch        uint64 `json:"epoch"`
				BehindEpochs uint64 `json:"behind_epochs"`
			} `json:"newest_per_partition"`
		} `json:"flows"`
	}
	if err := json.Unmarshal([]byte(must(t, backupBin, "list", "--from", to, "--json")), &js); err != nil {
		t.Fatal(err)
	}
	n := js.Flows[0].Newest
	if len(n) != 2 || n[0].BehindEpochs == 0 || n[0].Epoch+n[0].BehindEpochs != n[1].Epoch || n[1].BehindEpochs != 0 {
		t.Fatalf("list --json newest per partition: %+v", n)
	}
}
