package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// restoreAtJSON is what restore --json says of a restore to a time.
type restoreAtJSON struct {
	Epoch          uint64    `json:"epoch"`
	EpochTime      time.Time `json:"epoch_time"`
	EpochTimeExact bool      `json:"epoch_time_exact"`
	At             struct {
		At      time.Time `json:"at"`
		Settled bool      `json:"settled"`
		Exact   bool      `json:"exact"`
	} `json:"at"`
}

// The test of point-in-time restore: wordcount runs over input
// appended between runs, backed up now and then (not at the time restored
// to). A restore --at a time between two backups, continued over new
// input, gives exactly the totals of an uninterrupted run over the input
// read before that time plus the new input.
func TestCLI_RestoreAtATime(t *testing.T) {
	const keys = 2000
	root := t.TempDir()
	bucket := "file://" + filepath.Join(root, "bucket")
	rec, in := filepath.Join(root, "rec"), filepath.Join(root, "in.txt")
	os.Mkdir(rec, 0o755)
	must(t, flowrunBin, "recovery", "init", rec, "2")
	wc := func() {
		must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(root, "out.csv"), "-r", rec, "-s", "1s", "-b", "1h")
	}
	appendWords(t, in, 0, keys, 1) // every word once
	wc()
	must(t, backupBin, "backup", "-r", rec, "--to", bucket)
	appendWords(t, in, 0, keys/2, 1) // the first half once more
	wc()
	// The time to restore to: after the second run, before the third;
	// no backup was taken at it.
	time.Sleep(100 * time.Millisecond)
	at := time.Now()
	atInput := filepath.Join(root, "in-at.txt")
	copyInput(t, in, atInput)
	time.Sleep(100 * time.Millisecond)
	appendWords(t, in, 0, keys, 2) // every word twice more
	wc()
	appendWords(t, in, keys/2, keys, 1)
	wc()
	// This backup's range holds the state at the time, but its manifest
	// records only when the ends of the range closed.
	must(t, backupBin, "backup", "-r", rec, "--to", bucket)

	stamp := at.UTC().Format(time.RFC3339Nano)
	// list --at shows what the restore would use; list and verify show
	// the window.
	lst := must(t, backupBin, "list", "--from", bucket, "--at", stamp)
	if !strings.Contains(lst, "restorable window: from epoch ") || !strings.Contains(lst, "a restore to "+at.UTC().Format("2006-01-02T15:04:05.000Z07:00")+" would use epoch") ||
		!strings.Contains(lst, "    part 0   backup ") || !strings.Contains(lst, "    part 1   backup ") {
		t.Fatalf("list --at:\n%s", lst)
	}
	var lj struct {
		Flows []struct {
			From time.Time `json:"restorable_from"`
			To   time.Time `json:"restorable_to"`
			At   *struct {
				Partitions []struct{ Backup string } `json:"partitions"`
			} `json:"at"`
		} `json:"flows"`
	}
	if err := json.Unmarshal([]byte(must(t, backupBin, "list", "--from", bucket, "--json", "--at", stamp)), &lj); err != nil || len(lj.Flows) != 1 ||
		lj.Flows[0].At == nil || len(lj.Flows[0].At.Partitions) != 2 || !lj.Flows[0].From.Before(at) || !lj.Flows[0].To.After(at) {
		t.Fatalf("list --json --at: %+v (%v)", lj, err)
	}
	var vj struct {
		Flows []struct {
			From time.Time `json:"restorable_from"`
			To   time.Time `json:"restorable_to"`
		} `json:"flows"`
	}
	if err := json.Unmarshal([]byte(must(t, backupBin, "verify", "--from", bucket, "--json")), &vj); err != nil || len(vj.Flows) != 1 ||
		!vj.Flows[0].From.Equal(lj.Flows[0].From) || !vj.Flows[0].To.Equal(lj.Flows[0].To) {
		t.Fatalf("verify --json window %+v, list's %+v (%v)", vj, lj, err)
	}

	// The restore: exactly the state at the time, and it says so.
	rRec, rIn := filepath.Join(root, "r", "rec"), filepath.Join(root, "r", "in.txt")
	os.MkdirAll(filepath.Dir(rRec), 0o755)
	js := must(t, backupBin, "restore", "--from", bucket, "--to", rRec, "--at", stamp, "--json")
	var rj restoreAtJSON
	if err := json.Unmarshal([]byte(js), &rj); err != nil || !rj.At.Settled || !rj.At.Exact || !rj.EpochTimeExact || rj.EpochTime.After(at) || !rj.At.At.Equal(at) {
		t.Fatalf("restore --at --json: %+v (%v)\n%s", rj, err, js)
	}
	copyInput(t, atInput, rIn)
	restored := totalsAfter(t, nil, rRec, rIn, keys)

	// An uninterrupted run over the input read before the time, and the
	// same new input.
	cRec, cIn := filepath.Join(root, "c", "rec"), filepath.Join(root, "c", "in.txt")
	os.MkdirAll(cRec, 0o755)
	must(t, flowrunBin, "recovery", "init", cRec, "2")
	copyInput(t, atInput, cIn)
	want := totalsAfter(t, nil, cRec, cIn, keys)
	var diff []string
	for w, c := range want {
		if restored[w] != c {
			diff = append(diff, fmt.Sprintf("%s %s/%s", w, restored[w], c))
		}
	}
	sort.Strings(diff)
	if len(diff) > 0 || want[word(0)] != "3" || want[word(keys-1)] != "2" {
		t.Fatalf("restored/uninterrupted totals differ for %d words: %v (word 0: %s)", len(diff), diff[:min(5, len(diff))], want[word(0)])
	}

	// The human output names the epoch and its time.
	out := must(t, backupBin, "restore", "--from", bucket, "--to", filepath.Join(root, "h"), "--at", stamp)
	if !strings.Contains(out, fmt.Sprintf("at epoch %d (%s)", rj.Epoch, rj.EpochTime.UTC().Format(time.RFC3339))) || !strings.Contains(out, "exactly the state the flow was in then") {
		t.Fatalf("restore --at:\n%s", out)
	}

	// Refusals: nothing that old (exit 2, naming the oldest point); a
	// time and an epoch, a future time, a malformed one (exit 3).
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--at", "2001-01-01T00:00:00Z"}, 2, "the oldest restorable point is epoch "},
		{[]string{"--at", "1h"}, 2, "nothing is restorable as old as "},
		{[]string{"--at", stamp, "--epoch", "2"}, 3, "--at and --epoch exclude each other"},
		{[]string{"--at", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, 3, "is in the future"},
		{[]string{"--at", "yesterday"}, 3, "give an RFC 3339 time"},
	} {
		out, code := run(t, backupBin, append([]string{"restore", "--from", bucket, "--to", filepath.Join(root, "x"), "--dry-run"}, tc.args...)...)
		if code != tc.code || !strings.Contains(out, tc.msg) {
			t.Errorf("restore %v: exit %d, want %d and %q:\n%s", tc.args, code, tc.code, tc.msg, out)
		}
	}
	if out, code := run(t, backupBin, "list", "--from", bucket, "--at", "2001-01-01T00:00:00Z"); code != 2 || !strings.Contains(out, "the oldest restorable point is") {
		t.Errorf("list --at before the oldest: exit %d\n%s", code, out)
	}
}

// The multi-location test: backups copied to a second location
// with a plain file copy; the first is then missing, or missing chunks,
// and a restore from both still succeeds and says where it fell back.
func TestCLI_RestoreFromSeveralLocations(t *testing.T) {
	root := t.TempDir()
	rec := flowDir(t, "1h")
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	must(t, backupBin, "backup", "-r", rec, "--to", "file://"+a)
	if out, err := exec.Command("cp", "-r", a, b).CombinedOutput(); err != nil {
		t.Fatalf("cp -r: %v\n%s", err, out)
	}
	restoreTo := func(args ...string) (string, int) {
		return run(t, backupBin, append([]string{"restore", "--to", filepath.Join(t.TempDir(), "rec")}, args...)...)
	}

	// A is gone (renamed): B serves, and the output says A was skipped.
	os.Rename(a, a+".gone")
	out, code := restoreTo("--from", "file://"+a, "--from", "file://"+b)
	if code != 0 || !strings.Contains(out, "location file://"+a+" cannot be opened") || !strings.Contains(out, "restored partitions [0 1] of 2") {
		t.Fatalf("A missing: exit %d\n%s", code, out)
	}
	os.Rename(a+".gone", a)

	// A lost chunks: they are read from B, and the output says so.
	chunks, _ := filepath.Glob(filepath.Join(a, "chunks", "*", "*"))
	if len(chunks) < 2 {
		t.Fatalf("%d chunks in A", len(chunks))
	}
	for _, c := range chunks[:len(chunks)/2+1] {
		os.Remove(c)
	}
	if out, code := restoreTo("--from", "file://"+a); code == 0 {
		t.Fatalf("A alone restored without its chunks:\n%s", out)
	}
	out, code = restoreTo("--from", "file://"+a, "--from", "file://"+b)
	if code != 0 || !strings.Contains(out, "from file://"+b+" that file://"+a+" is missing") || !strings.Contains(out, "read chunks from: file://"+a) {
		t.Fatalf("A missing chunks: exit %d\n%s", code, out)
	}
	// The locations as one setting (FLOWBACKUP_FROM, or from: [A, B] in
	// the config file), as JSON.
	cmd := exec.Command(backupBin, "restore", "--to", filepath.Join(t.TempDir(), "rec"), "--json")
	cmd.Env = append(os.Environ(), "FLOWBACKUP_FROM=file://"+a+",file://"+b)
	js, err := cmd.Output()
	var rj struct {
		ReadFrom  map[string]int64 `json:"read_from"`
		Fallbacks []string         `json:"fallbacks"`
	}
	if err != nil || json.Unmarshal(js, &rj) != nil || rj.ReadFrom["file://"+b] == 0 || len(rj.Fallbacks) == 0 {
		t.Fatalf("FLOWBACKUP_FROM=A,B: %v\n%s", err, js)
	}
	// A mistyped location is a usage error, not a location that is down.
	if out, code := restoreTo("--from", "file://"+a, "--from", "file://relative/path"); code != 3 || !strings.Contains(out, "bad storage URL") {
		t.Fatalf("a mistyped second location: exit %d\n%s", code, out)
	}
}

// Several locations as one setting: a list in the config file names them
// all; the environment's location replaces the file's (it does not add to
// it), as it does for every setting.
func TestCLI_LocationsFromTheConfigAndTheEnvironment(t *testing.T) {
	root := t.TempDir()
	rec := flowDir(t, "1h")
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	must(t, backupBin, "backup", "-r", rec, "--to", "file://"+a)
	copyTree(t, a, b)
	cfg := filepath.Join(root, "flowbackup.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("restore:\n  from: [file://%s, file://%s]\n", a, b)), 0o644)
	out := must(t, backupBin, "restore", "--config", cfg, "--to", filepath.Join(root, "r1"))
	if !strings.Contains(out, "read chunks from: file://"+a) || !strings.Contains(out, "file://"+b) {
		t.Fatalf("restore with from: [A, B] in the config:\n%s", out)
	}
	os.WriteFile(cfg, []byte(fmt.Sprintf("url: file://%s\n", a)), 0o644)
	cmd := exec.Command(backupBin, "restore", "--config", cfg, "--to", filepath.Join(root, "r2"))
	cmd.Env = append(os.Environ(), "FLOWBACKUP_FROM=file://"+b)
	got, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(got), "file://"+a) || strings.Contains(string(got), "read chunks from") {
		t.Fatalf("FLOWBACKUP_FROM=B over a config naming A: %v\n%s", err, got)
	}
}
