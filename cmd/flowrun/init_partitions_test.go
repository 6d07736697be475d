package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A single machine's first start creates the partitions, later starts
// resume on them, and a start told another count is refused with the
// count the flow has.
func TestRun_InitPartitionsFirstStartOnly(t *testing.T) {
	dir := t.TempDir()
	rec := filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	writeWords(t, in, 2000, 1, false)
	flags := []string{"run", "wordcount", "-i", in, "-o", out, "-s", "50ms", "-b", "0", "-r", rec}
	got := mustRun(t, append(flags, "--init-partitions", "3")...)
	if !strings.Contains(got, "created 3 recovery partitions") {
		t.Fatalf("first start:\n%s", got)
	}
	writeWords(t, in, 2000, 2, true)
	got = mustRun(t, append(flags, "--init-partitions", "3")...)
	if strings.Contains(got, "created") {
		t.Fatalf("second start created partitions:\n%s", got)
	}
	got, code := runCLI(t, append(flags, "--init-partitions", "4")...)
	if code == 0 || !strings.Contains(got, "--init-partitions 3") || !strings.Contains(got, "fixed for the life of a flow") {
		t.Fatalf("another count: exit %d\n%s", code, got)
	}
	all := filepath.Join(dir, "all.txt")
	writeWords(t, all, 2000, 1, false)
	writeWords(t, all, 2000, 2, true)
	mustRun(t, "run", "wordcount", "-i", all, "-o", filepath.Join(dir, "want.csv"))
	sameTotals(t, out, filepath.Join(dir, "want.csv"), "after a first start and a continuation")
	// Without -r there is nothing to create partitions in.
	if got, code := runCLI(t, "run", "wordcount", "-i", in, "-o", "-", "--init-partitions", "2"); code != 2 || !strings.Contains(got, "needs -r") {
		t.Fatalf("without -r: exit %d\n%s", code, got)
	}
}

// Two processes on empty directories, both started with --init-partitions:
// they agree on one flow, each creates its share (partition i on process
// i mod 2), the run gives one process's totals, and a second start resumes
// on the same flow.
func TestCluster_InitPartitionsAgreeOnOneFlow(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.Mkdir(a, 0o755)
	os.Mkdir(b, 0o755)
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	writeWords(t, in, 20000, 1, false)
	flags := []string{"-i", in, "-o", out, "-s", "30ms", "-b", "100ms", "--init-partitions", "4"}
	res := runClusterCmd(t, 1, [][]string{{a}, {b}}, flags...)
	for i, r := range res {
		if r.code != 0 {
			t.Fatalf("process %d: exit %d\n%s", i, r.code, r.out)
		}
	}
	if !strings.Contains(res[0].out, "process 0: created recovery partitions 0, 2 of 4") || !strings.Contains(res[1].out, "process 1: created recovery partitions 1, 3 of 4") {
		t.Fatalf("shares:\n%s\n%s", res[0].out, res[1].out)
	}
	for dir, want := range map[string][]string{a: {"part-0.sqlite3", "part-2.sqlite3"}, b: {"part-1.sqlite3", "part-3.sqlite3"}} {
		for _, n := range want {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeWords(t, in, 20000, 2, true)
	// A restart with the flag again creates nothing and resumes.
	for i, r := range runClusterCmd(t, 2, [][]string{{a}, {b}}, flags...) {
		if r.code != 0 || strings.Contains(r.out, "created") {
			t.Fatalf("restart, process %d: exit %d\n%s", i, r.code, r.out)
		}
	}
	all := filepath.Join(dir, "all.txt")
	writeWords(t, all, 20000, 1, false)
	writeWords(t, all, 20000, 2, true)
	mustRun(t, "run", "wordcount", "-i", all, "-o", filepath.Join(dir, "want.csv"))
	sameTotals(t, out, filepath.Join(dir, "want.csv"), "2 processes from a first start")
	// And a single process over both directories takes them as one flow.
	mustRun(t, "run", "wordcount", "-i", in, "-o", out, "-s", "30ms", "-b", "100ms", "-r", a, "-r", b)
}

// Processes told different counts (or one told none) refuse to start, all
// of them, saying so; partitions of another count are refused.
func TestCluster_InitPartitionsMustAgree(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.Mkdir(a, 0o755)
	os.Mkdir(b, 0o755)
	in := filepath.Join(dir, "in.txt")
	writeWords(t, in, 100, 1, false)
	flags := []string{"-i", in, "-o", filepath.Join(dir, "o.csv"), "-s", "1s", "-b", "0"}
	res := runClusterEnv(t, 1, [][]string{{a}, {b}}, [][]string{{"FLOWRUN_INIT_PARTITIONS=4"}, {"FLOWRUN_INIT_PARTITIONS=2"}}, flags...)
	for i, r := range res {
		if r.code == 0 || !strings.Contains(r.out, "give every process the same count") {
			t.Fatalf("process %d: exit %d\n%s", i, r.code, r.out)
		}
	}
	if ents, _ := os.ReadDir(a); len(ents) != 0 {
		t.Fatalf("a refused start created %v", ents)
	}
	splitPartitions(t, a, 2, map[string][]int{b: {1}})
	res = runClusterEnv(t, 1, [][]string{{a}, {b}}, [][]string{{"FLOWRUN_INIT_PARTITIONS=4"}, {"FLOWRUN_INIT_PARTITIONS=4"}}, flags...)
	for i, r := range res {
		if r.code == 0 || !strings.Contains(r.out, "--init-partitions 2") {
			t.Fatalf("process %d: exit %d\n%s", i, r.code, r.out)
		}
	}
}
