package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

var flowrunBin, backupBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flowrun-test")
	if err != nil {
		panic(err)
	}
	flowrunBin, backupBin = filepath.Join(dir, "flowrun"), filepath.Join(dir, "flowbackup")
	for bin, pkg := range map[string]string{flowrunBin: ".", backupBin: "../flowbackup"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			panic(fmt.Sprintf("build %s: %v\n%s", pkg, err, out))
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// flowrun runs the binary and returns its stderr and exit code.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(flowrunBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stderr.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return stderr.String(), 0
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, code := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("flowrun %v: exit %d\n%s", args, code, out)
	}
	return out
}

func writeWords(t *testing.T, path string, lines int, seed int64, appendTo bool) {
	t.Helper()
	writeVocab(t, path, lines, 5000, seed, appendTo)
}

// letterWord spells i with letters only (wordcount splits on digits), with
// an upper-case first letter so lower-casing is exercised.
func letterWord(i int) string {
	b := []byte{byte('A' + i%26)}
	for i /= 26; i > 0; i /= 26 {
		b = append(b, byte('a'+i%26))
	}
	return string(b)
}

func TestCLI_BadInputClearErrorsAndExitCodes(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("a b\n"), 0o644)
	out := filepath.Join(dir, "out.csv")
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown flow", []string{"run", "nope", "-i", in, "-o", out}, 2, `unknown flow "nope": flows are logstats, wordcount`},
		{"no input flag", []string{"run", "wordcount", "-o", out}, 2, "--input is required"},
		{"unreadable input", []string{"run", "wordcount", "-i", filepath.Join(dir, "missing.txt"), "-o", out}, 2, "no such file"},
		{"output dir missing", []string{"run", "wordcount", "-i", in, "-o", filepath.Join(dir, "no", "out.csv")}, 2, "does not exist"},
		{"bad worker count", []string{"run", "wordcount", "-i", in, "-o", out, "-w", "0"}, 2, "-w must be at least 1"},
		{"-r without -s and -b", []string{"run", "wordcount", "-i", in, "-o", out, "-r", dir}, 2, "-r needs the snapshot interval (e.g. -s 10s) and the backup interval"},
		{"-r without -b", []string{"run", "wordcount", "-i", in, "-o", out, "-r", dir, "-s", "1s"}, 2, "-r needs the backup interval"},
		{"-r on a dir without partitions", []string{"run", "wordcount", "-i", in, "-o", out, "-r", dir, "-s", "1s", "-b", "0"}, 1, "no recovery partitions"},
		{"bad flag", []string{"run", "wordcount", "--bogus"}, 2, "unknown flag"},
		{"-s not a duration", []string{"run", "wordcount", "-i", in, "-o", out, "-s", "soon"}, 2, "give seconds (30) or a number with a unit"},
		{"-s absurdly long", []string{"run", "wordcount", "-i", in, "-o", out, "-r", dir, "-s", "1000000h", "-b", "0"}, 2, "-s 1000000h0m0s is longer than 24h0m0s"},
		{"-b absurdly long", []string{"run", "wordcount", "-i", in, "-o", out, "-r", dir, "-s", "10", "-b", "9999h"}, 2, "-b 9999h0m0s is longer than"},
		{"init on a missing dir", []string{"recovery", "init", filepath.Join(dir, "nope"), "2"}, 2, "not a directory"},
		{"init with bad count", []string{"recovery", "init", dir, "zero"}, 2, "positive number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, code := runCLI(t, tt.args...)
			if code != tt.code || !strings.Contains(msg, tt.msg) {
				t.Fatalf("exit %d, output:\n%s\nwant exit %d and %q", code, msg, tt.code, tt.msg)
			}
		})
	}
}

// -s and -b take a bare number of seconds, as Bytewax does.
func TestCLI_IntervalsInBareSeconds(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("a b a\n"), 0o644)
	rec := filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	mustRun(t, "recovery", "init", rec, "2")
	mustRun(t, "run", "wordcount", "-i", in, "-o", filepath.Join(dir, "out.csv"), "-r", rec, "-s", "30", "-b", "300")
	if got := mustRun(t, "recovery", "inspect", rec); !strings.Contains(got, "snapshot 30s, backup 5m0s") {
		t.Fatalf("inspect does not show -s 30 -b 300 as 30s and 5m:\n%s", got)
	}
}

func TestCLI_HelpExplainsEveryFlag(t *testing.T) {
	msg := mustRun(t, "run", "--help")
	for _, want := range []string{"-w, --workers", "-s, --snapshot-interval", "-b, --backup-interval", "-r, --recovery-dir", "--input", "--output", "e.g.", "Exit codes"} {
		if !strings.Contains(msg, want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
}

func TestWordcount_LogstatsMalformedCounted(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.log")
	os.WriteFile(in, []byte("2026-01-01T00:00:01Z a 1\ngarbage\n2026-01-01T00:00:02Z a x\n2026-01-01T00:00:03Z a 2\n"), 0o644)
	out := filepath.Join(dir, "out.csv")
	msg := mustRun(t, "run", "logstats", "-i", in, "-o", out)
	if !strings.Contains(msg, "malformed_lines=2") {
		t.Fatalf("summary: %s", msg)
	}
	b, _ := os.ReadFile(out)
	if string(b) != "window,2026-01-01T00:00:00Z,2026-01-01T00:01:00Z,a,2,3,1,2\n" {
		t.Fatalf("output %q", b)
	}
}

// startKill starts flowrun and SIGKILLs it after d. It reports whether the
// process was still running when killed.
func startKill(t *testing.T, d time.Duration, args ...string) bool {
	t.Helper()
	cmd := exec.Command(flowrunBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("flowrun failed before the kill: %v\n%s", err, stderr.String())
		}
		return false
	case <-time.After(d):
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
	return true
}

// crashTrials runs args (a flow with -r REC and output OUT, both given as
// placeholders) to completion after SIGKILLs at random points, and returns the
// outputs. Kill points are spread over the duration of a clean run.
func crashTrials(t *testing.T, dir string, trials int, args []string, check func(trial, kills int, out string)) {
	t.Helper()
	subst := func(rec, out string) []string {
		a := append([]string(nil), args...)
		for i := range a {
			a[i] = strings.NewReplacer("REC", rec, "OUT", out).Replace(a[i])
		}
		return a
	}
	// A clean run with recovery, to learn how long one takes.
	rec := filepath.Join(dir, "rec-clean")
	os.Mkdir(rec, 0o755)
	mustRun(t, "recovery", "init", rec, "4")
	began := time.Now()
	mustRun(t, subst(rec, filepath.Join(dir, "clean.out"))...)
	span := time.Since(began)
	r := rand.New(rand.NewSource(time.Now().UnixNano()))
	for trial := 0; trial < trials; trial++ {
		// The first kill must land mid-run: if the run beats it (the
		// machine may be faster or slower than during the clean run), the
		// trial starts over with an earlier kill.
		frac := 0.6
		var rec, out string
		kills := 0
		for try := 0; kills == 0; try++ {
			if try == 6 {
				t.Fatalf("trial %d: no kill landed mid-run (a clean run takes %v)", trial, span)
			}
			rec = filepath.Join(dir, fmt.Sprintf("rec%d-%d", trial, try))
			out = filepath.Join(dir, fmt.Sprintf("out%d-%d", trial, try))
			os.Mkdir(rec, 0o755)
			mustRun(t, "recovery", "init", rec, "4")
			d := time.Duration(float64(span) * frac * (0.1 + 0.9*r.Float64()))
			if startKill(t, d, append(subst(rec, out), "-w", fmt.Sprint(1+r.Intn(4)))...) {
				kills++
			}
			frac /= 2
		}
		// Then up to two more kills of the resumed runs.
		for attempt := 0; attempt < 2; attempt++ {
			d := time.Duration(float64(span) * (0.05 + 0.5*r.Float64()))
			if startKill(t, d, append(subst(rec, out), "-w", fmt.Sprint(1+r.Intn(4)))...) {
				kills++
			}
		}
		mustRun(t, append(subst(rec, out), "-w", "3")...)
		check(trial, kills, out)
	}
}

func TestRecovery_SIGKILLAtRandomPointsThenResumeMatchesUninterrupted(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	writeWords(t, in, 1000000, 1, false)
	want := filepath.Join(dir, "want.csv")
	mustRun(t, "run", "wordcount", "-i", in, "-o", want, "-w", "2")
	// Lines are written as they come, so with other worker counts their
	// order differs: compare what the output says, exactly once.
	crashTrials(t, dir, 3, []string{"run", "wordcount", "-i", in, "-o", "OUT", "-r", "REC", "-s", "50ms", "-b", "0"}, func(trial, kills int, out string) {
		sameLines(t, out, want, fmt.Sprintf("trial %d after %d kills", trial, kills))
		sameTotals(t, out, want, fmt.Sprintf("trial %d after %d kills", trial, kills))
		t.Logf("trial %d: %d kills, the same lines", trial, kills)
	})
}

// Logstats writes windows all along the run, so kills land between output
// writes and commits: the file sink's truncation must make it exactly-once.
func TestRecovery_SIGKILLDuringContinuousOutputIsExactlyOnce(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.log")
	f, _ := os.Create(in)
	w := bufio.NewWriter(f)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := rand.New(rand.NewSource(2))
	for i := 0; i < 300000; i++ {
		ts := base.Add(time.Duration(i)*10*time.Millisecond - time.Duration(r.Intn(3000))*time.Millisecond)
		fmt.Fprintf(w, "%s k%d %d\n", ts.Format(time.RFC3339Nano), r.Intn(40), r.Intn(1000))
	}
	w.Flush()
	f.Close()
	want := filepath.Join(dir, "want.csv")
	mustRun(t, "run", "logstats", "-i", in, "-o", want, "-w", "2", "--window", "1s", "--lateness", "1s")
	crashTrials(t, dir, 3, []string{"run", "logstats", "-i", in, "-o", "OUT", "-r", "REC", "-s", "30ms", "-b", "0", "--window", "1s", "--lateness", "1s"}, func(trial, kills int, out string) {
		sameLines(t, out, want, fmt.Sprintf("trial %d after %d kills", trial, kills))
		t.Logf("trial %d: %d kills, same lines", trial, kills)
	})
}

func TestRecovery_ContinuationReadsOnlyAppended(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	rec := filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	mustRun(t, "recovery", "init", rec, "3")
	out := filepath.Join(dir, "out.csv")
	args := []string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "0", "-w", "2"}
	os.WriteFile(in, []byte("apple banana apple\n"), 0o644)
	mustRun(t, args...)
	f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("cherry Apple\n")
	f.Close()
	mustRun(t, args...)
	before, _ := os.ReadFile(out)
	mustRun(t, args...) // nothing new
	after, _ := os.ReadFile(out)
	// Each run's lines in the order its two workers wrote them.
	if got := runsOf(string(after), 2, 2); got != "apple,2 banana,1 | apple,3 cherry,1" || !bytes.Equal(before, after) {
		t.Fatalf("output %q (before the empty run %q), want the first run's apple,2 and banana,1, then the second's apple,3 and cherry,1", after, before)
	}
}

// runsOf splits output into runs of the given numbers of lines, each
// sorted (a run's workers write in any order), as "a b | c d".
func runsOf(output string, sizes ...int) string {
	lines := strings.Split(strings.TrimSuffix(output, "\n"), "\n")
	var runs []string
	for _, n := range sizes {
		if n > len(lines) {
			return fmt.Sprintf("%q is shorter than %v lines", output, sizes)
		}
		run := slices.Clone(lines[:n])
		sort.Strings(run)
		runs = append(runs, strings.Join(run, " "))
		lines = lines[n:]
	}
	if len(lines) > 0 {
		return fmt.Sprintf("%q is longer than %v lines", output, sizes)
	}
	return strings.Join(runs, " | ")
}

// sameLines checks that the output file got holds the lines of want (one
// uninterrupted run), each as often, in any order: output is written as it
// comes, so the order of lines written by different workers varies.
func sameLines(t *testing.T, got, want, what string) {
	t.Helper()
	lines := func(path string) []string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		ls := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		sort.Strings(ls)
		return ls
	}
	g, w := lines(got), lines(want)
	if len(g) != len(w) {
		t.Fatalf("%s: %d output lines, %d in one run", what, len(g), len(w))
	}
	for i := range g {
		if g[i] != w[i] {
			t.Fatalf("%s: output line %q where one run has %q (sorted, line %d)", what, g[i], w[i], i)
		}
	}
}

// lastTotals reads a wordcount output from the top, keeping each word's last line.
func lastTotals(t *testing.T, path string) map[string]string {
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

func TestRecovery_RescaleThreeFiveOneMatchesOneRun(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	all := filepath.Join(dir, "all.txt")
	rec := filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	mustRun(t, "recovery", "init", rec, "4")
	out := filepath.Join(dir, "out.csv")
	for i, w := range []string{"3", "5", "1"} {
		writeWords(t, in, 20000, int64(i), i > 0)
		mustRun(t, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "20ms", "-b", "100ms", "-w", w)
	}
	writeWords(t, all, 20000, 0, false)
	writeWords(t, all, 20000, 1, true)
	writeWords(t, all, 20000, 2, true)
	one := filepath.Join(dir, "one.csv")
	mustRun(t, "run", "wordcount", "-i", all, "-o", one, "-w", "2")
	sameTotals(t, out, one, "3->5->1 workers")
}

// sameTotals checks that the wordcount output got holds the same final total
// for every word as want (one uninterrupted run).
func sameTotals(t *testing.T, got, want, what string) {
	t.Helper()
	g, w := lastTotals(t, got), lastTotals(t, want)
	if len(g) != len(w) {
		t.Fatalf("%d words after %s, %d in one run", len(g), what, len(w))
	}
	for word, c := range w {
		if g[word] != c {
			t.Fatalf("word %s: %s after %s, %s in one run", word, g[word], what, c)
		}
	}
}

func TestRecovery_InspectShowsPartitions(t *testing.T) {
	dir := t.TempDir()
	rec := filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	mustRun(t, "recovery", "init", rec, "2")
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("a b c\n"), 0o644)
	mustRun(t, "run", "wordcount", "-i", in, "-o", filepath.Join(dir, "o.csv"), "-r", rec, "-s", "1s", "-b", "5s", "-w", "2")
	msg := mustRun(t, "recovery", "inspect", rec)
	for _, want := range []string{"partition 0/2", "partition 1/2", "flow            wordcount", "restorable      epochs 1..2", "intervals       snapshot 1s, backup 5s",
		"execution 0     2 workers from epoch 1", "frontiers       w0=2 w1=2", "files           db", "next run resumes at epoch 2"} {
		if !strings.Contains(msg, want) {
			t.Errorf("inspect lacks %q:\n%s", want, msg)
		}
	}
	js := mustRun(t, "recovery", "inspect", rec, "--json")
	if !strings.Contains(js, `"resume_epoch": 2`) || !strings.Contains(js, `"flow_name": "wordcount"`) {
		t.Errorf("json: %s", js)
	}
	// A directory missing a partition cannot be resumed from: inspect says
	// why and exits 1 (text and JSON alike).
	os.Remove(filepath.Join(rec, "part-1.sqlite3"))
	for _, args := range [][]string{{"recovery", "inspect", rec}, {"recovery", "inspect", rec, "--json"}} {
		out, code := runCLI(t, args...)
		if code != 1 || !strings.Contains(out, "cannot resume") || !strings.Contains(out, "partition 0/2") && !strings.Contains(out, `"index": 0`) {
			t.Errorf("%v on a directory missing a partition: exit %d\n%s", args, code, out)
		}
	}
}

// copyTree copies the files under from into to.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Partitions written by flowkeep before schema version 2 (testdata/v1) are
// migrated on the next run, which resumes exactly where they stood:
// continuing over appended input gives the totals of one run over all of it.
func TestRecovery_SchemaV1PartitionsMigrateAndContinue(t *testing.T) {
	dir := t.TempDir()
	copyTree(t, "../../testdata/v1", dir)
	in, out, rec := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv"), filepath.Join(dir, "rec")
	more, _ := os.ReadFile(filepath.Join(dir, "more.txt"))
	f, _ := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	f.Write(more)
	f.Close()
	msg := mustRun(t, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "2s", "-w", "3")
	if !strings.Contains(msg, "epochs 6..6") {
		t.Fatalf("did not resume at epoch 6: %s", msg)
	}
	one := filepath.Join(dir, "one.csv")
	mustRun(t, "run", "wordcount", "-i", in, "-o", one, "-w", "2")
	sameTotals(t, out, one, "a schema-1 flow continued")
	if js := mustRun(t, "recovery", "inspect", rec, "--json"); !strings.Contains(js, `"schema": 2`) {
		t.Fatalf("not migrated: %s", js)
	}
}

// SIGINT and SIGTERM stop a run cleanly with 128+signal, saying what was
// saved; the next run resumes after it.
func TestRun_SignalStopsCleanlyAndSaysWhatWasSaved(t *testing.T) {
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		rec  bool
		code int
		want string
	}{
		{"SIGINT with recovery", syscall.SIGINT, true, 130, "stopped by interrupt; state is durable through epoch "},
		{"SIGTERM with recovery", syscall.SIGTERM, true, 143, "stopped by terminated; state is durable through epoch "},
		{"SIGINT without recovery", syscall.SIGINT, false, 130, "nothing was saved (no -r)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rec := filepath.Join(dir, "rec")
			os.Mkdir(rec, 0o755)
			mustRun(t, "recovery", "init", rec, "2")
			args := []string{"run", "wordcount", "-i", "-", "-o", filepath.Join(dir, "out.csv")}
			if tc.rec {
				args = append(args, "-r", rec, "-s", "50ms", "-b", "0")
			}
			cmd := exec.Command(flowrunBin, args...)
			stdin, _ := cmd.StdinPipe()
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(stdin, "some words to count")
			// Let a few epochs become durable (stdin stays open: the run goes on).
			deadline := time.Now().Add(20 * time.Second)
			for tc.rec && time.Now().Before(deadline) {
				if got, _ := runCLI(t, "recovery", "inspect", rec); strings.Contains(got, "restorable      epochs") && !strings.Contains(got, "epochs 1..1") {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
			cmd.Process.Signal(tc.sig)
			err := cmd.Wait()
			stdin.Close()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != tc.code || !strings.Contains(out.String(), tc.want) {
				t.Fatalf("exit %d, output:\n%s\nwant exit %d and %q", code, out.String(), tc.code, tc.want)
			}
		})
	}
}

func TestCLI_VersionFlagAndCommand(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out := mustRun(t, args...)
		if !strings.HasPrefix(out, "flowrun ") {
			t.Fatalf("flowrun %v: %q", args, out)
		}
	}
}

// A flow run again with -o pointed at another directory must not resume
// into the unrelated file of the same name there (the sink's partition is
// the base name): it refuses, says which file and what to do, and leaves the
// file as it was. A copy of the flow's own output resumes anywhere.
func TestRecovery_OutputOfSameNameElsewhereIsRefusedUntouched(t *testing.T) {
	dir := t.TempDir()
	in, rec := filepath.Join(dir, "in.txt"), filepath.Join(dir, "rec")
	for _, d := range []string{rec, filepath.Join(dir, "A"), filepath.Join(dir, "B"), filepath.Join(dir, "C")} {
		os.Mkdir(d, 0o755)
	}
	a, b, c := filepath.Join(dir, "A", "counts.csv"), filepath.Join(dir, "B", "counts.csv"), filepath.Join(dir, "C", "counts.csv")
	mustRun(t, "recovery", "init", rec, "2")
	args := func(out string) []string {
		return []string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "0"}
	}
	appendInput := func(s string) {
		f, _ := os.OpenFile(in, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		f.WriteString(s)
		f.Close()
	}
	appendInput("apple banana apple\n")
	mustRun(t, args(a)...)

	appendInput("cherry Apple\n")
	unrelated := []byte("region,total\nnorth,120\nsouth,75\neast,19\nwest,301\n")
	os.WriteFile(b, unrelated, 0o644)
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	os.Chtimes(b, old, old)
	msg, code := runCLI(t, args(b)...)
	if code != 1 || !strings.Contains(msg, b) || !strings.Contains(msg, a) || !strings.Contains(msg, "left untouched") {
		t.Fatalf("exit %d, output:\n%s\nwant exit 1 naming %s, the flow's own output %s and what to do", code, msg, b, a)
	}
	if got, _ := os.ReadFile(b); !bytes.Equal(got, unrelated) {
		t.Fatalf("%s changed to %q", b, got)
	}
	if st, _ := os.Stat(b); !st.ModTime().Equal(old) {
		t.Fatalf("%s modified at %v", b, st.ModTime())
	}

	// The refused run lost nothing: the flow's own output continues, and a
	// copy of it at another path (a restore from elsewhere) continues too.
	mustRun(t, args(a)...)
	if got, want := mustReadString(t, a), "apple,2\nbanana,1\napple,3\ncherry,1\n"; got != want {
		t.Fatalf("%s: %q, want %q", a, got, want)
	}
	copyTree(t, filepath.Join(dir, "A"), filepath.Join(dir, "C"))
	appendInput("banana\n")
	mustRun(t, args(c)...)
	if got, want := mustReadString(t, c), "apple,2\nbanana,1\napple,3\ncherry,1\nbanana,2\n"; got != want {
		t.Fatalf("%s: %q, want %q", c, got, want)
	}
}

func mustReadString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
