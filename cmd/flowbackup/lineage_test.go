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
)

// machineEnv makes a command play one machine: its host name and its
// machine id.
func machineEnv(name string) []string {
	return []string{"FLOWKEEP_HOST=" + name, "FLOWKEEP_MACHINE_ID=" + name}
}

// runAs runs bin as machine env; it returns stdout and stderr apart.
func runAs(t *testing.T, env []string, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

func mustAs(t *testing.T, env []string, bin string, args ...string) string {
	t.Helper()
	out, errs, code := runAs(t, env, bin, args...)
	if code != 0 {
		t.Fatalf("%s %v: exit %d\n%s%s", filepath.Base(bin), args, code, out, errs)
	}
	return out + errs
}

// word is the i-th of the test's words: letters only (wordcount counts
// runs of letters).
func word(i int) string {
	b := []byte("k")
	for n := i + 1; n > 0; n /= 26 {
		b = append(b, byte('a'+n%26))
	}
	return string(b)
}

// words writes each word of [lo, hi) once per line, n times over.
func appendWords(t *testing.T, path string, lo, hi, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sb strings.Builder
	for r := 0; r < n; r++ {
		for i := lo; i < hi; i++ {
			sb.WriteString(word(i))
			sb.WriteByte('\n')
		}
	}
	if _, err := f.WriteString(sb.String()); err != nil {
		t.Fatal(err)
	}
}

func copyInput(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// totalsAfter continues the flow in rec over the words of in plus every
// word once more, writing to stdout, and returns each word's total.
func totalsAfter(t *testing.T, env []string, rec, in string, keys int) map[string]string {
	t.Helper()
	appendWords(t, in, 0, keys, 1)
	out := mustAs(t, env, flowrunBin, "run", "wordcount", "-i", in, "-o", "-", "-r", rec, "-s", "1s", "-b", "1h")
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if w, c, ok := strings.Cut(line, ","); ok && strings.HasPrefix(w, "k") {
			got[w] = c
		}
	}
	if len(got) != keys {
		t.Fatalf("the continuation emitted %d of %d words:\n%.500s", len(got), keys, out)
	}
	return got
}

// The scenario: a flow restored onto NEW while OLD keeps running and
// backing up. Restore lays down one machine's history (continued, it gives
// exactly NEW's totals), verify names both machines, OLD's next backup is
// fenced, --take-over hands the location back, and retiring the other
// lineage clears the fork.
func TestLineage_RestoreWhileTheOldMachineRuns(t *testing.T) {
	const keys = 5000
	oldM, newM, third := machineEnv("old-vm"), machineEnv("new-vm"), machineEnv("dr-test")
	root := t.TempDir()
	bucket := "file://" + filepath.Join(root, "bucket")
	dirs := map[string]string{}
	for _, m := range []string{"old", "new", "r", "cmp"} {
		dirs[m] = filepath.Join(root, m)
		os.MkdirAll(filepath.Join(dirs[m], "rec"), 0o755)
	}
	oldRec, oldIn := filepath.Join(dirs["old"], "rec"), filepath.Join(dirs["old"], "in.txt")
	newRec, newIn := filepath.Join(dirs["new"], "rec"), filepath.Join(dirs["new"], "in.txt")
	run := func(env []string, rec, in, out string) {
		mustAs(t, env, flowrunBin, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "1h")
	}

	// OLD runs and is backed up.
	mustAs(t, oldM, flowrunBin, "recovery", "init", oldRec, "2")
	appendWords(t, oldIn, 0, keys, 1)
	run(oldM, oldRec, oldIn, filepath.Join(dirs["old"], "out.csv"))
	mustAs(t, oldM, backupBin, "backup", "-r", oldRec, "--to", bucket)

	// NEW is restored from it; OLD keeps running.
	os.Remove(newRec)
	rs := mustAs(t, newM, backupBin, "restore", "--from", bucket, "--to", newRec)
	if !strings.Contains(rs, "history: lineage") || !strings.Contains(rs, "start lineage") {
		t.Fatalf("restore does not say which history it laid down:\n%s", rs)
	}
	copyInput(t, oldIn, newIn)
	copyInput(t, filepath.Join(dirs["old"], "out.csv"), filepath.Join(dirs["new"], "out.csv"))
	appendWords(t, oldIn, 0, keys, 1) // OLD: every word twice
	run(oldM, oldRec, oldIn, filepath.Join(dirs["old"], "out.csv"))
	mustAs(t, oldM, backupBin, "backup", "-r", oldRec, "--to", bucket)
	appendWords(t, newIn, 0, keys/2, 2) // NEW: the first half three times, the rest once
	first := mustAs(t, newM, flowrunBin, "run", "wordcount", "-i", newIn, "-o", filepath.Join(dirs["new"], "out.csv"), "-r", newRec, "-s", "1s", "-b", "1h")
	if !strings.Contains(first, "restored from a backup: this run starts lineage") {
		t.Fatalf("the restored run does not say it starts a new history:\n%s", first)
	}
	mustAs(t, newM, backupBin, "backup", "-r", newRec, "--to", bucket)

	// Verify names both machines.
	out, errs, code := runAs(t, third, backupBin, "verify", "--from", bucket)
	if code != 1 || !strings.Contains(out, "two machines are backing up flow wordcount") || !strings.Contains(out, "host old-vm") || !strings.Contains(out, "host new-vm") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errs)
	}
	js, _, _ := runAs(t, third, backupBin, "verify", "--from", bucket, "--json")
	var rep struct {
		Flows []struct {
			Lineage  string   `json:"lineage"`
			Forks    []string `json:"forks"`
			Lineages []struct {
				Lineage struct{ ID string } `json:"lineage"`
				Hosts   []string            `json:"hosts"`
			} `json:"lineages"`
		} `json:"flows"`
	}
	if err := json.Unmarshal([]byte(js), &rep); err != nil || len(rep.Flows) != 1 || len(rep.Flows[0].Forks) != 1 || len(rep.Flows[0].Lineages) != 2 {
		t.Fatalf("verify --json: %v\n%s", err, js)
	}
	newLineage := rep.Flows[0].Lineage
	if h := rep.Flows[0].Lineages[0].Hosts; rep.Flows[0].Lineages[0].Lineage.ID != newLineage || len(h) != 1 || h[0] != "new-vm" {
		t.Fatalf("the current history is not NEW's: %s", js)
	}

	// Restore lays down NEW's history alone: continued, the totals are
	// NEW's for every word (a mix would give OLD's for one partition's).
	rRec, rIn := filepath.Join(dirs["r"], "rec"), filepath.Join(dirs["r"], "in.txt")
	os.Remove(rRec)
	rs = mustAs(t, third, backupBin, "restore", "--from", bucket, "--to", rRec)
	if !strings.Contains(rs, "history: lineage "+newLineage[:12]) || !strings.Contains(rs, "two machines are backing up") {
		t.Fatalf("restore:\n%s", rs)
	}
	copyInput(t, newIn, rIn)
	restored := totalsAfter(t, third, rRec, rIn, keys)
	for i := 0; i < keys; i++ {
		want := "2" // OLD's would be 3 for every word
		if i < keys/2 {
			want = "4"
		}
		if got := restored[word(i)]; got != want {
			t.Fatalf("word %d (%s): the restored flow continues at %s, NEW's history gives %s", i, word(i), got, want)
		}
	}

	// OLD's next backup is fenced (exit 1), and says what to do.
	appendWords(t, oldIn, 0, 10, 1)
	run(oldM, oldRec, oldIn, filepath.Join(dirs["old"], "out.csv"))
	out, errs, code = runAs(t, oldM, backupBin, "backup", "-r", oldRec, "--to", bucket)
	if code != 1 || !strings.Contains(out+errs, "fenced") || !strings.Contains(out+errs, "--take-over") {
		t.Fatalf("OLD's backup after NEW claimed the flow: exit %d\n%s%s", code, out, errs)
	}
	lst := mustAs(t, third, backupBin, "list", "--from", bucket)
	if !strings.Contains(lst, "fenced at") || !strings.Contains(lst, "restores use it") || !strings.Contains(lst, "restore at epoch") {
		t.Fatalf("list does not show the lineage tree:\n%s", lst)
	}

	// --take-over gives the location back to OLD; NEW is then fenced.
	mustAs(t, oldM, backupBin, "backup", "-r", oldRec, "--to", bucket, "--take-over")
	dry := mustAs(t, third, backupBin, "restore", "--from", bucket, "--to", filepath.Join(root, "x"), "--dry-run", "--json")
	var plan struct {
		Lineage string `json:"lineage"`
		Pin     string `json:"pin"`
	}
	if err := json.Unmarshal([]byte(dry), &plan); err != nil || plan.Lineage == newLineage || plan.Lineage == "" {
		t.Fatalf("after OLD's take-over the plan is %+v (%v)", plan, err)
	}
	if _, _, code := runAs(t, newM, backupBin, "backup", "-r", newRec, "--to", bucket); code != 1 {
		t.Fatalf("NEW's backup after OLD took over: exit %d", code)
	}
	// NEW's machine is gone: retiring its lineage clears the fork.
	mustAs(t, third, backupBin, "prune", "--from", bucket, "--retire-lineage", newLineage[:10])
	if out, errs, code := runAs(t, third, backupBin, "verify", "--from", bucket); code != 0 {
		t.Fatalf("verify after the retirement: exit %d\n%s%s", code, out, errs)
	}
	// --lineage still restores the retired history exactly.
	cRec, cIn := filepath.Join(dirs["cmp"], "rec"), filepath.Join(dirs["cmp"], "in.txt")
	os.Remove(cRec)
	mustAs(t, third, backupBin, "restore", "--from", bucket, "--to", cRec, "--lineage", newLineage[:10])
	copyInput(t, newIn, cIn)
	again := totalsAfter(t, third, cRec, cIn, keys)
	var diff []string
	for w, c := range again {
		if restored[w] != c {
			diff = append(diff, fmt.Sprintf("%s %s/%s", w, c, restored[w]))
		}
	}
	sort.Strings(diff)
	if len(diff) > 0 {
		t.Fatalf("restoring the retired lineage by id gave other totals: %v", diff[:min(5, len(diff))])
	}
}

// The exact interleaving: the newest backup of partition 0 is
// OLD's and of partition 1 NEW's, their epoch ranges overlapping. Before
// lineages, restore combined them (exit 0) into a state no run ever had.
// Now it restores one history: NEW's, where every partition reaches it
// (here the fork point, the state both shared), and verify reports the fork.
func TestLineage_NewestBackupsFromTwoMachinesAreNotMixed(t *testing.T) {
	const keys = 2000
	oldM, newM, third := machineEnv("old-vm"), machineEnv("new-vm"), machineEnv("dr-test")
	root := t.TempDir()
	bucket := "file://" + filepath.Join(root, "bucket")
	oldRec, newRec := filepath.Join(root, "old", "rec"), filepath.Join(root, "new", "rec")
	oldIn, newIn := filepath.Join(root, "old", "in.txt"), filepath.Join(root, "new", "in.txt")
	os.MkdirAll(oldRec, 0o755)
	os.MkdirAll(filepath.Dir(newRec), 0o755)
	run := func(env []string, rec, in string) {
		mustAs(t, env, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "1s", "-b", "1h")
	}
	mustAs(t, oldM, flowrunBin, "recovery", "init", oldRec, "2")
	appendWords(t, oldIn, 0, keys, 1)
	run(oldM, oldRec, oldIn)
	mustAs(t, oldM, backupBin, "backup", "-r", oldRec, "--to", bucket)
	mustAs(t, newM, backupBin, "restore", "--from", bucket, "--to", newRec)
	copyInput(t, oldIn, newIn)
	copyInput(t, filepath.Join(root, "old", "out.csv"), filepath.Join(root, "new", "out.csv"))
	appendWords(t, oldIn, 0, keys, 1)
	run(oldM, oldRec, oldIn)
	mustAs(t, oldM, backupBin, "backup", "-r", oldRec, "--to", bucket, "--partitions", "0")
	appendWords(t, newIn, 0, keys, 2)
	run(newM, newRec, newIn)
	mustAs(t, newM, backupBin, "backup", "-r", newRec, "--to", bucket, "--partitions", "1")

	if out, errs, code := runAs(t, third, backupBin, "verify", "--from", bucket); code != 1 || !strings.Contains(out, "two machines") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errs)
	}
	rRec, rIn := filepath.Join(root, "r", "rec"), filepath.Join(root, "r", "in.txt")
	os.MkdirAll(filepath.Dir(rRec), 0o755)
	rs := mustAs(t, third, backupBin, "restore", "--from", bucket, "--to", rRec, "--json")
	var plan struct {
		Epoch      uint64 `json:"epoch"`
		Partitions []struct {
			Lineage string `json:"lineage"`
		} `json:"partitions"`
	}
	if err := json.Unmarshal([]byte(rs), &plan); err != nil {
		t.Fatalf("%v\n%s", err, rs)
	}
	// At the fork point the input read was the first copy of every word.
	copyInput(t, filepath.Join(root, "old", "in.txt"), rIn)
	os.Truncate(rIn, 0)
	appendWords(t, rIn, 0, keys, 1)
	got := totalsAfter(t, third, rRec, rIn, keys)
	seen := map[string]int{}
	for _, c := range got {
		seen[c]++
	}
	if len(seen) != 1 || seen["2"] != keys {
		t.Fatalf("restored epoch %d continues with totals %v (2 for every word is the one history every partition reaches; OLD's would be 3, NEW's 4)", plan.Epoch, seen)
	}
}

// A recovery directory rolled back to a snapshot (the files' contents put
// back: same inodes, same machine) and run again on other input keeps its
// lineage id, but not its runs. Its backup of partition 0 beside the
// pre-rollback backup of partition 1 is never combined past the point the
// two histories parted: continued, the restore gives the totals of that
// point for every word.
func TestLineage_ARolledBackDirectoryIsNotMixedWithItsOldBackups(t *testing.T) {
	const keys = 400
	root := t.TempDir()
	bucket := "file://" + filepath.Join(root, "bucket")
	rec, in := filepath.Join(root, "rec"), filepath.Join(root, "in.txt")
	os.MkdirAll(rec, 0o755)
	run := func() {
		must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", "-", "-r", rec, "-s", "1s", "-b", "1h")
	}
	must(t, flowrunBin, "recovery", "init", rec, "2")
	appendWords(t, in, 0, keys, 1)
	run()
	snap := filepath.Join(root, "snap")
	os.MkdirAll(snap, 0o755)
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		copyInput(t, filepath.Join(rec, n), filepath.Join(snap, n))
	}
	snapIn := filepath.Join(snap, "in.txt")
	copyInput(t, in, snapIn)
	for i := 0; i < 3; i++ {
		appendWords(t, in, 0, keys, 1) // every word, three more times
		run()
	}
	must(t, backupBin, "backup", "-r", rec, "--to", bucket)
	// Roll back: the old contents into the same files; the input too.
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		b, _ := os.ReadFile(filepath.Join(snap, n))
		if err := os.WriteFile(filepath.Join(rec, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(rec, n+"-wal"))
		os.Remove(filepath.Join(rec, n+"-shm"))
	}
	copyInput(t, snapIn, in)
	for i := 0; i < 3; i++ {
		appendWords(t, in, 0, keys/2, 1) // the first half only
		run()
	}
	must(t, backupBin, "backup", "-r", rec, "--to", bucket, "--partitions", "0")

	dst, dstIn := filepath.Join(root, "r"), filepath.Join(root, "r", "in.txt")
	out := must(t, backupBin, "restore", "--from", bucket, "--to", dst, "--json")
	copyInput(t, snapIn, dstIn) // the input as the restored epoch had read it (the source resumes by file name)
	got := totalsAfter(t, nil, dst, dstIn, keys)
	counts := map[string]int{}
	for _, c := range got {
		counts[c]++
	}
	// Restored where the histories part (after the first run: every word
	// once), then every word once more.
	if len(counts) != 1 || counts["2"] != keys {
		t.Fatalf("the restore continues with totals %v (a mix of the histories before and after the rollback?)\n%s", counts, out)
	}
}

// What an operator could get wrong is refused, with what to do: a
// directory that mixes two histories (inspect says so, backup refuses it
// as flowrun does), retiring the history restores use, and a forged
// claim from the future fences no one.
func TestLineage_MistakesAreRefused(t *testing.T) {
	root := t.TempDir()
	rec := flowDir(t, "1h")
	bucketDir := filepath.Join(root, "bucket")
	bucket := "file://" + bucketDir
	must(t, backupBin, "backup", "-r", rec, "--to", bucket)
	cp := filepath.Join(root, "copy")
	os.MkdirAll(cp, 0o755)
	for _, n := range []string{"part-0.sqlite3", "part-1.sqlite3"} {
		copyInput(t, filepath.Join(rec, n), filepath.Join(cp, n))
	}
	in := filepath.Join(filepath.Dir(rec), "in.txt")
	must(t, flowrunBin, "run", "wordcount", "-i", in, "-o", "-", "-r", cp, "-s", "1s", "-b", "1h") // the copy forks
	mixed := filepath.Join(root, "mixed")
	os.MkdirAll(mixed, 0o755)
	copyInput(t, filepath.Join(rec, "part-0.sqlite3"), filepath.Join(mixed, "part-0.sqlite3"))
	copyInput(t, filepath.Join(cp, "part-1.sqlite3"), filepath.Join(mixed, "part-1.sqlite3"))
	if out, code := run(t, flowrunBin, "recovery", "inspect", mixed); code != 1 || !strings.Contains(out, "two histories") {
		t.Fatalf("inspect of a mixed directory: exit %d\n%s", code, out)
	}
	if out, code := run(t, backupBin, "backup", "-r", mixed, "--to", bucket); code != 3 || !strings.Contains(out, "two histories") {
		t.Fatalf("backup of a mixed directory: exit %d\n%s", code, out)
	}
	lst := must(t, backupBin, "list", "--from", bucket, "--json")
	var rep struct {
		Flows []struct {
			OverlapLineage string `json:"overlap_lineage"`
		} `json:"flows"`
	}
	if err := json.Unmarshal([]byte(lst), &rep); err != nil || len(rep.Flows) != 1 {
		t.Fatalf("%v\n%s", err, lst)
	}
	current := rep.Flows[0].OverlapLineage
	if out, code := run(t, backupBin, "prune", "--from", bucket, "--retire-lineage", strings.ToUpper(current[:8])); code != 3 || !strings.Contains(out, "restores use now") {
		t.Fatalf("retiring the current lineage: exit %d\n%s", code, out)
	}
	// A claim dated 2099 by someone else fences nobody.
	forged := filepath.Join(bucketDir, "lineages", current, "0123456789abcdef", "claim-20990101T000000.000Z-00000000.json")
	os.MkdirAll(filepath.Dir(forged), 0o755)
	os.WriteFile(forged, []byte(`{}`), 0o644)
	must(t, backupBin, "backup", "-r", rec, "--to", bucket)
}
