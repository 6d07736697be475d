package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/freeport"
)

func clusterAddrs(t *testing.T, n int) string {
	t.Helper()
	addrs, err := freeport.Addrs(n)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(addrs, ",")
}

type procResult struct {
	out  string
	code int
}

// runClusterCmd starts one flowrun per entry of recs (process i gets the
// directories recs[i]) and waits for all of them.
func runClusterCmd(t *testing.T, workers int, recs [][]string, args ...string) []procResult {
	t.Helper()
	return runClusterEnv(t, workers, recs, nil, args...)
}

// runClusterEnv is runClusterCmd with extra environment variables for each
// process (env[i], if any).
func runClusterEnv(t *testing.T, workers int, recs [][]string, env [][]string, args ...string) []procResult {
	t.Helper()
	return runClusterFlow(t, "wordcount", workers, recs, env, args...)
}

// runClusterFlow is runClusterEnv for the built-in flow named flow.
func runClusterFlow(t *testing.T, flow string, workers int, recs [][]string, env [][]string, args ...string) []procResult {
	t.Helper()
	addrs := clusterAddrs(t, len(recs))
	res := make([]procResult, len(recs))
	var wg sync.WaitGroup
	for i, dirs := range recs {
		wg.Add(1)
		go func(i int, dirs []string) {
			defer wg.Done()
			a := append([]string{"run", flow}, args...)
			a = append(a, "-w", fmt.Sprint(workers), "--addresses", addrs)
			for _, d := range dirs {
				a = append(a, "-r", d)
			}
			cmd := exec.Command(flowrunBin, a...)
			cmd.Env = append(os.Environ(), fmt.Sprintf("FLOWRUN_PROCESS_ID=%d", i)) // env form of --process-id
			if i < len(env) {
				cmd.Env = append(cmd.Env, env[i]...)
			}
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			res[i] = procResult{out.String(), 0}
			if ee, ok := err.(*exec.ExitError); ok {
				res[i].code = ee.ExitCode()
			} else if err != nil {
				res[i] = procResult{err.Error(), -1}
			}
		}(i, dirs)
	}
	wg.Wait()
	return res
}

func mustCluster(t *testing.T, workers int, recs [][]string, args ...string) {
	t.Helper()
	for i, r := range runClusterCmd(t, workers, recs, args...) {
		if r.code != 0 {
			t.Fatalf("process %d of %d: exit %d\n%s", i, len(recs), r.code, r.out)
		}
	}
}

func splitPartitions(t *testing.T, dir string, n int, moves map[string][]int) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	mustRun(t, "recovery", "init", dir, fmt.Sprint(n))
	for to, parts := range moves {
		os.MkdirAll(to, 0o755)
		for _, p := range parts {
			name := fmt.Sprintf("part-%d.sqlite3", p)
			if err := os.Rename(filepath.Join(dir, name), filepath.Join(to, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// 2 processes x 2 workers, then 3 x 1, then 1 x 4, over an input that grows
// between runs: the totals equal one process's over the whole input.
func TestCluster_RescaleAcrossProcessAndWorkerCounts(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	splitPartitions(t, a, 4, map[string][]int{b: {2, 3}})
	os.MkdirAll(c, 0o755)
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	all := filepath.Join(dir, "all.txt")
	flags := []string{"-i", in, "-o", out, "-s", "30ms", "-b", "100ms"}
	writeWords(t, in, 30000, 1, false)
	mustCluster(t, 2, [][]string{{a}, {b}}, flags...)
	writeWords(t, in, 30000, 2, true)
	// Three processes; b is reachable by two of them: one owner only.
	mustCluster(t, 1, [][]string{{a}, {b}, {c, b}}, flags...)
	writeWords(t, in, 30000, 3, true)
	mustRun(t, append([]string{"run", "wordcount", "-w", "4", "-r", a, "-r", b}, flags...)...)

	writeWords(t, all, 30000, 1, false)
	writeWords(t, all, 30000, 2, true)
	writeWords(t, all, 30000, 3, true)
	one := filepath.Join(dir, "one.csv")
	mustRun(t, "run", "wordcount", "-i", all, "-o", one, "-w", "2")
	sameTotals(t, out, one, "2x2, 3x1, 1x4")
}

func TestCluster_RefusesWhenAPartitionIsUnreachable(t *testing.T) {
	dir := t.TempDir()
	a, elsewhere := filepath.Join(dir, "a"), filepath.Join(dir, "elsewhere")
	splitPartitions(t, a, 4, map[string][]int{elsewhere: {3}})
	in := filepath.Join(dir, "in.txt")
	writeWords(t, in, 100, 1, false)
	res := runClusterCmd(t, 1, [][]string{{a}, {a}}, "-i", in, "-o", filepath.Join(dir, "o.csv"), "-s", "1s", "-b", "0")
	for i, r := range res {
		if r.code == 0 || !strings.Contains(r.out, "no process can reach partitions 3 of 4") {
			t.Fatalf("process %d: exit %d\n%s", i, r.code, r.out)
		}
	}
}

// SIGKILL one process of two mid-run: the other stops promptly, naming it;
// the whole cluster resumed gives the uninterrupted run's output.
func TestCluster_SIGKILLOneProcessThenResumeLosesNothing(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	splitPartitions(t, a, 4, map[string][]int{b: {0, 1}})
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	writeWords(t, in, 1_500_000, 7, false)
	want := filepath.Join(dir, "want.csv")
	mustRun(t, "run", "wordcount", "-i", in, "-o", want, "-w", "2")
	flags := []string{"run", "wordcount", "-i", in, "-o", out, "-s", "50ms", "-b", "0", "-w", "1"}
	c := startTwo(t, flags, a, b)
	time.Sleep(700 * time.Millisecond)
	killedAt := time.Now()
	c.killSecond(t)
	if c.procs[0].ProcessState.ExitCode() == 0 {
		t.Fatalf("process 0 finished normally: the kill came too late\n%s", c.outs[0].String())
	}
	if !strings.Contains(c.outs[0].String(), "process 1") {
		t.Fatalf("process 0 does not name the lost peer:\n%s", c.outs[0].String())
	}
	if strings.Contains(c.outs[0].String(), "panic") || strings.Contains(c.outs[0].String(), "goroutine ") {
		t.Fatalf("process 0 panicked when its peer died mid-commit:\n%s", c.outs[0].String())
	}
	t.Logf("process 0 stopped %v after the kill: %s", time.Since(killedAt).Round(time.Millisecond), strings.TrimSpace(c.outs[0].String()))
	mustCluster(t, 1, [][]string{{a}, {b}}, "-i", in, "-o", out, "-s", "50ms", "-b", "0")
	sameLines(t, out, want, "the resumed cluster")
	sameTotals(t, out, want, "the resumed cluster")
}

// twoProcs is a cluster of two flowrun processes, for tests that kill one.
type twoProcs struct {
	procs [2]*exec.Cmd
	outs  [2]bytes.Buffer
	done  chan int
}

// startTwo starts args as process 0 (-r dir0) and process 1 (-r dir1) of a
// cluster.
func startTwo(t *testing.T, args []string, dir0, dir1 string) *twoProcs {
	t.Helper()
	addrs := clusterAddrs(t, 2)
	c := &twoProcs{done: make(chan int, 2)}
	for i, d := range []string{dir0, dir1} {
		c.procs[i] = exec.Command(flowrunBin, append(append([]string(nil), args...), "-r", d, "--addresses", addrs, "--process-id", fmt.Sprint(i))...)
		c.procs[i].Stdout, c.procs[i].Stderr = &c.outs[i], &c.outs[i]
		if err := c.procs[i].Start(); err != nil {
			t.Fatal(err)
		}
		go func(i int) { c.procs[i].Wait(); c.done <- i }(i)
	}
	return c
}

// killSecond SIGKILLs process 1 and waits for process 0, which must stop
// on its own within 20 seconds.
func (c *twoProcs) killSecond(t *testing.T) {
	t.Helper()
	c.procs[1].Process.Kill()
	<-c.done
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		c.procs[0].Process.Kill()
		t.Fatal("process 0 kept running after its peer died")
	}
}

// walBytes is the size of the write-ahead logs of the partitions in dir.
func walBytes(dir string) int64 {
	ms, _ := filepath.Glob(filepath.Join(dir, "*.sqlite3-wal"))
	var n int64
	for _, m := range ms {
		if st, err := os.Stat(m); err == nil {
			n += st.Size()
		}
	}
	return n
}

// SIGKILL the middle process of three while snapshot rows flow between all
// of them (each owns partitions the others commit to, every 10ms): the two
// others end promptly with an error naming it (their own, or the cause the
// other one passed on), never a panic or a hang; the cluster resumed gives
// the uninterrupted run's output.
func TestCluster_SIGKILLDuringCommitTrafficOthersEndCleanly(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	splitPartitions(t, a, 6, map[string][]int{b: {2, 3}, c: {4, 5}})
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	writeWords(t, in, 1_500_000, 11, false)
	want := filepath.Join(dir, "want.csv")
	mustRun(t, "run", "wordcount", "-i", in, "-o", want, "-w", "2")
	flags := []string{"run", "wordcount", "-i", in, "-o", out, "-s", "10ms", "-b", "0", "-w", "1"}
	addrs := clusterAddrs(t, 3)
	dirs := []string{a, b, c}
	var procs [3]*exec.Cmd
	var outs [3]bytes.Buffer
	exited := [3]chan struct{}{make(chan struct{}), make(chan struct{}), make(chan struct{})}
	wal0 := make([]int64, len(dirs))
	for i, d := range dirs {
		wal0[i] = walBytes(d)
		procs[i] = exec.Command(flowrunBin, append(flags, "-r", d, "--addresses", addrs, "--process-id", fmt.Sprint(i))...)
		procs[i].Stdout, procs[i].Stderr = &outs[i], &outs[i]
		if err := procs[i].Start(); err != nil {
			t.Fatal(err)
		}
		go func(i int) { procs[i].Wait(); close(exited[i]) }(i)
	}
	defer func() {
		for i, p := range procs {
			select {
			case <-exited[i]:
			default:
				p.Process.Kill()
				<-exited[i]
			}
		}
	}()
	// Commit traffic: every process's partitions have taken commits.
	deadline := time.Now().Add(30 * time.Second)
	for {
		busy := true
		for i, d := range dirs {
			if walBytes(d) < wal0[i]+64<<10 {
				busy = false
			}
		}
		if busy {
			break
		}
		for i := range procs {
			select {
			case <-exited[i]:
				t.Fatalf("process %d ended before the commit traffic was under way:\n%s", i, outs[i].String())
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the partitions never took commits")
		}
		time.Sleep(5 * time.Millisecond)
	}
	procs[1].Process.Signal(syscall.SIGKILL)
	killedAt := time.Now()
	t.Logf("killed process 1 with the partitions' logs at %d, %d and %d bytes", walBytes(a), walBytes(b), walBytes(c))
	for _, i := range []int{0, 2} {
		select {
		case <-exited[i]:
		case <-time.After(20 * time.Second):
			procs[i].Process.Kill()
			<-exited[i]
			t.Fatalf("process %d kept running after process 1 was killed:\n%s", i, outs[i].String())
		}
		o := outs[i].String()
		if procs[i].ProcessState.ExitCode() == 0 {
			t.Fatalf("process %d finished normally: the kill came too late\n%s", i, o)
		}
		if strings.Contains(o, "panic") || strings.Contains(o, "goroutine ") || strings.Contains(o, "DATA RACE") {
			t.Fatalf("process %d did not end cleanly when process 1 died mid-commit:\n%s", i, o)
		}
		if !strings.Contains(o, "process 1") {
			t.Fatalf("process %d does not name the lost process 1:\n%s", i, o)
		}
		t.Logf("process %d stopped %v after the kill (exit %d): %s", i, time.Since(killedAt).Round(time.Millisecond),
			procs[i].ProcessState.ExitCode(), strings.TrimSpace(o[strings.LastIndex(strings.TrimSpace(o), "\n")+1:]))
	}
	mustCluster(t, 1, [][]string{{a}, {b}, {c}}, "-i", in, "-o", out, "-s", "50ms", "-b", "0")
	sameLines(t, out, want, "the cluster resumed after the kill")
}

// With a shared secret (FLOWRUN_CLUSTER_SECRET) the cluster runs; a process
// with another secret is refused, and both say why.
func TestCluster_SharedSecret(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	splitPartitions(t, a, 4, map[string][]int{b: {0, 1}})
	in := filepath.Join(dir, "in.txt")
	writeWords(t, in, 1000, 1, false)
	flags := []string{"-i", in, "-o", filepath.Join(dir, "o.csv"), "-s", "1", "-b", "0", "--connect-timeout", "3"}
	secret := func(s string) []string { return []string{"FLOWRUN_CLUSTER_SECRET=" + s} }
	for i, r := range runClusterEnv(t, 1, [][]string{{a}, {b}}, [][]string{secret("right"), secret("right")}, flags...) {
		if r.code != 0 || strings.Contains(r.out, "not authenticated") {
			t.Fatalf("process %d with the shared secret: exit %d\n%s", i, r.code, r.out)
		}
	}
	res := runClusterEnv(t, 1, [][]string{{a}, {b}}, [][]string{secret("right"), secret("wrong")}, flags...)
	for i, r := range res {
		if r.code == 0 || !strings.Contains(r.out, "the cluster secrets differ") {
			t.Fatalf("process %d with mismatched secrets: exit %d\n%s", i, r.code, r.out)
		}
	}
	// Without any secret it still runs, with a warning.
	for i, r := range runClusterCmd(t, 1, [][]string{{a}, {b}}, flags...) {
		if r.code != 0 || !strings.Contains(r.out, "not authenticated") {
			t.Fatalf("process %d without a secret: exit %d\n%s", i, r.code, r.out)
		}
	}
}

func mustBackup(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(backupBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("flowbackup %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// A 2-process cluster restored onto 3 new machines, each restoring its
// share pinned to one plan (--lineage, --epoch from restore --dry-run
// --json), runs on and gives one process's totals; a machine that restored
// another epoch makes the cluster refuse to start, saying which.
func TestCluster_RestoredOntoThreeMachinesFromOnePlan(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	splitPartitions(t, a, 4, map[string][]int{b: {2, 3}})
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	flags := []string{"-i", in, "-o", out, "-s", "30ms", "-b", "1h"}
	writeWords(t, in, 20000, 1, false)
	mustCluster(t, 2, [][]string{{a}, {b}}, flags...)
	bucket := "file://" + filepath.Join(dir, "bucket")
	mustBackup(t, "backup", "-r", a, "--to", bucket)
	mustBackup(t, "backup", "-r", b, "--to", bucket)
	var plan struct {
		Lineage string `json:"lineage"`
		Epoch   uint64 `json:"epoch"`
		Pin     string `json:"pin"`
	}
	js := mustBackup(t, "restore", "--from", bucket, "--dry-run", "--json")
	if err := json.Unmarshal([]byte(js), &plan); err != nil || plan.Epoch < 3 || !strings.Contains(plan.Pin, "--lineage "+plan.Lineage) {
		t.Fatalf("plan %+v (%v):\n%s", plan, err, js)
	}
	restoreShares := func(prefix string, epochs ...uint64) [][]string {
		var recs [][]string
		for i, e := range epochs {
			d := filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i))
			mustBackup(t, "restore", "--from", bucket, "--to", d, "--process-id", fmt.Sprint(i), "--processes", fmt.Sprint(len(epochs)),
				"--lineage", plan.Lineage, "--epoch", fmt.Sprint(e))
			recs = append(recs, []string{d})
		}
		return recs
	}
	// One machine restored another epoch: refused by every process.
	bad := restoreShares("bad", plan.Epoch, plan.Epoch, plan.Epoch-1)
	for i, r := range runClusterCmd(t, 1, bad, flags...) {
		if r.code == 0 || !strings.Contains(r.out, "restored at epoch") || !strings.Contains(r.out, "every machine must restore one plan") {
			t.Fatalf("process %d with a machine restored at another epoch: exit %d\n%s", i, r.code, r.out)
		}
	}
	// Pinned to one plan: the three machines' restores (three pending
	// lineages of one parent and fork) become one history and run on.
	good := restoreShares("m", plan.Epoch, plan.Epoch, plan.Epoch)
	writeWords(t, in, 20000, 2, true)
	res := runClusterCmd(t, 1, good, flags...)
	for i, r := range res {
		if r.code != 0 || !strings.Contains(r.out, "restored from a backup: this run starts lineage") {
			t.Fatalf("process %d: exit %d\n%s", i, r.code, r.out)
		}
	}
	lineage := regexp.MustCompile(`starts lineage ([0-9a-f]+)`).FindStringSubmatch(res[0].out)[1]
	for i, r := range res {
		if !strings.Contains(r.out, "starts lineage "+lineage) {
			t.Fatalf("process %d started another lineage than process 0's %s:\n%s", i, lineage, r.out)
		}
	}
	all, one := filepath.Join(dir, "all.txt"), filepath.Join(dir, "one.csv")
	writeWords(t, all, 20000, 1, false)
	writeWords(t, all, 20000, 2, true)
	mustRun(t, "run", "wordcount", "-i", all, "-o", one, "-w", "2")
	sameTotals(t, out, one, "2 processes restored onto 3")
}
