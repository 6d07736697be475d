package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests of --state-memory in a cluster (issue 31): a worker's keys live in
// partitions any process may own, so evicted keys, and keys never loaded
// at a resume, are read back from their owner.

// Runs over appended input as 2 processes x 1 worker with the flag, 3 x 2
// (one directory reachable by two processes), 1 x 3 with the flag, then 2
// x 1 without it, give the totals of one run without recovery. With a
// 4 MiB bound over 200k words, keys leave memory all the time and are
// read back, about half of them from the other process's partitions.
func TestCluster_StateMemoryRescaleMatchesOneRun(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	splitPartitions(t, a, 4, map[string][]int{b: {2, 3}})
	os.MkdirAll(c, 0o755)
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	all := filepath.Join(dir, "all.txt")
	flags := []string{"-i", in, "-o", out, "-s", "50ms", "-b", "100ms"}
	bound := append([]string{"--state-memory", "4MiB"}, flags...)
	for i := 0; i < 4; i++ {
		writeVocab(t, all, 40000, 200000, int64(i), i > 0)
	}
	writeVocab(t, in, 40000, 200000, 0, false)
	mustCluster(t, 1, [][]string{{a}, {b}}, bound...)
	writeVocab(t, in, 40000, 200000, 1, true)
	mustCluster(t, 2, [][]string{{a}, {b}, {c, b}}, bound...)
	writeVocab(t, in, 40000, 200000, 2, true)
	mustRun(t, append([]string{"run", "wordcount", "-w", "3", "-r", a, "-r", b}, bound...)...)
	writeVocab(t, in, 40000, 200000, 3, true)
	mustCluster(t, 1, [][]string{{a}, {b}}, flags...)

	one := filepath.Join(dir, "one.csv")
	mustRun(t, "run", "wordcount", "-i", all, "-o", one, "-w", "2")
	sameTotals(t, out, one, "2x1 bounded, 3x2 bounded, 1x3 bounded, 2x1 unbounded")
}

// logstats as 2 processes with the flag, one of them SIGKILLed mid-run,
// then resumed: open windows are read back from whichever process's
// partition holds them and closed by later lines or at end of input (a
// scan merged in key order across the processes), and the output is one
// uninterrupted run's.
func TestCluster_StateMemoryWindowsCloseAfterAKill(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.log")
	writeLogLines(t, in, 400000, 60000, 5)
	window := []string{"--window", "10s", "--lateness", "1s"}
	want := filepath.Join(dir, "want.csv")
	mustRun(t, append([]string{"run", "logstats", "-i", in, "-o", want, "-w", "2"}, window...)...)

	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	splitPartitions(t, a, 4, map[string][]int{b: {0, 3}})
	out := filepath.Join(dir, "out.csv")
	flags := append([]string{"-i", in, "-o", out, "-s", "30ms", "-b", "0", "--state-memory", "4MiB", "-w", "1"}, window...)
	c := startTwo(t, append([]string{"run", "logstats"}, flags...), a, b)
	// Kill once epochs are durable in every partition: the resume then
	// reads windows back instead of starting over.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && durableIn(a, b) < 3 {
		time.Sleep(20 * time.Millisecond)
	}
	c.killSecond(t)
	if c.procs[0].ProcessState.ExitCode() == 0 {
		t.Skipf("the run ended before the kill: nothing to resume\n%s", c.outs[0].String())
	}
	for i, r := range runClusterFlow(t, "logstats", 1, [][]string{{a}, {b}}, nil, flags...) {
		if r.code != 0 {
			t.Fatalf("resumed process %d: exit %d\n%s", i, r.code, r.out)
		}
		if m := regexp.MustCompile(`epochs (\d+)\.\.`).FindStringSubmatch(r.out); m == nil || m[1] == "1" {
			t.Fatalf("resumed process %d did not resume past epoch 1:\n%s", i, r.out)
		}
	}
	sameLines(t, out, want, "the cluster resumed after a kill, with --state-memory")
}

// durableIn is the least frontier of any worker in any partition in dirs,
// as flowrun recovery inspect prints them (0 if there is none yet).
func durableIn(dirs ...string) int {
	least, seen := 0, false
	for _, d := range dirs {
		out, _ := exec.Command(flowrunBin, "recovery", "inspect", d).CombinedOutput()
		for _, line := range regexp.MustCompile(`(?m)^\s*frontiers\s+(.*)$`).FindAllStringSubmatch(string(out), -1) {
			for _, f := range regexp.MustCompile(`w\d+=(\d+)`).FindAllStringSubmatch(line[1], -1) {
				n, _ := strconv.Atoi(f[1])
				if !seen || n < least {
					least, seen = n, true
				}
			}
		}
	}
	return least
}

// A bound on one process and not on another, or recovery on one process
// and not on another, is refused at connection, before anything runs or
// touches a partition (a key one process evicts may be read from the
// other's partitions, which then must read every commit back; and the two
// take different paths through the start, which waited for each other for
// ever): the dialing process stops at once, the accepting one (which a
// stranger's connection must not stop) when its connect timeout ends,
// both saying what differs.
func TestCluster_StateMemoryAndRecoveryOnEveryProcessOrNone(t *testing.T) {
	for _, c := range []struct {
		name string
		env  [][]string
		recs [][]string // relative to the test's directory; "" for none
	}{
		{"bound on one", [][]string{nil, {"FLOWRUN_STATE_MEMORY=8MiB"}}, [][]string{{"a"}, {"b"}}},
		{"recovery on one", nil, [][]string{{"a"}, nil}},
		{"recovery and bound on one", [][]string{{"FLOWRUN_STATE_MEMORY=8MiB"}}, [][]string{{"a"}, nil}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			splitPartitions(t, a, 4, map[string][]int{b: {2, 3}})
			before := inspectOut(t, a)
			in := filepath.Join(dir, "in.txt")
			writeVocab(t, in, 1000, 1000, 1, false)
			recs := make([][]string, len(c.recs))
			for i, ds := range c.recs {
				for _, d := range ds {
					recs[i] = append(recs[i], filepath.Join(dir, d))
				}
			}
			start := time.Now()
			res := runClusterEnv(t, 1, recs, c.env, "-i", in, "-o", filepath.Join(dir, "o.csv"), "-s", "1s", "-b", "0", "--connect-timeout", "5s")
			for i, r := range res {
				if r.code == 0 || !strings.Contains(r.out, "-r and --state-memory on every process or none") {
					t.Fatalf("process %d: exit %d after %v\n%s", i, r.code, time.Since(start).Round(time.Millisecond), r.out)
				}
			}
			if after := inspectOut(t, a); after != before {
				t.Fatalf("the refused start wrote to the partitions:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// inspectOut is what flowrun recovery inspect prints of dir.
func inspectOut(t *testing.T, dir string) string {
	t.Helper()
	out, _ := exec.Command(flowrunBin, "recovery", "inspect", dir).CombinedOutput()
	return string(out)
}
