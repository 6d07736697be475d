package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/recovery"
)

// Tests of --state-memory (issue 31): keyed state as a cache over the
// recovery partitions. The bounds are the smallest the flag takes (4MiB)
// and the inputs have far more keys than fit, so keys are evicted and read
// back from the partitions all along.

// writeVocab writes lines of 8 words drawn uniformly from vocab words.
func writeVocab(t *testing.T, path string, lines, vocab int, seed int64, appendTo bool) {
	t.Helper()
	flag := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if appendTo {
		flag = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	r := rand.New(rand.NewSource(seed))
	for i := 0; i < lines; i++ {
		for j := 0; j < 8; j++ {
			if j > 0 {
				w.WriteByte(' ')
			}
			w.WriteString(letterWord(r.Intn(vocab)))
		}
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// usage is what one flowrun process used, from the kernel's accounting.
type usage struct {
	cpu    time.Duration
	maxRSS int64 // bytes
}

// runEnv runs flowrun with env added to its environment and fails the test
// unless it succeeds.
func runEnv(t *testing.T, env []string, args ...string) usage {
	t.Helper()
	cmd := exec.Command(flowrunBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("flowrun %v: %v\n%s", args, err, out.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return usage{cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), maxRSS: ru.Maxrss * 1024}
}

func TestCLI_StateMemoryNeedsRecoveryAndOneProcess(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("a b\n"), 0o644)
	out := filepath.Join(dir, "out.csv")
	rec := []string{"-r", dir, "-s", "1s", "-b", "0"}
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"without -r", []string{"--state-memory", "64MiB"}, "--state-memory needs -r"},
		{"below the least", append([]string{"--state-memory", "1MiB"}, rec...), `--state-memory "1MiB": give a size of at least 4.0 MiB`},
		{"not a size", append([]string{"--state-memory", "lots"}, rec...), `--state-memory "lots": give a size`},
		{"empty", append([]string{"--state-memory", ""}, rec...), `--state-memory "": give a size`},
		{"too large", append([]string{"--state-memory", "8EiB"}, rec...), `--state-memory "8EiB": too large`},
		{"beyond int64", append([]string{"--state-memory", "16EiB"}, rec...), `--state-memory "16EiB": too large`},
		{"a fraction", append([]string{"--state-memory", "1.5GiB"}, rec...), `--state-memory "1.5GiB": give a whole number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, code := runCLI(t, append([]string{"run", "wordcount", "-i", in, "-o", out}, tt.args...)...)
			if code != 2 || !strings.Contains(msg, tt.msg) {
				t.Fatalf("exit %d, output:\n%s\nwant exit 2 and %q", code, msg, tt.msg)
			}
		})
	}
}

// Three runs over appended input, with 3, 5 and 1 workers, with the flag on
// every run or only on some (partitions written either way are read either
// way), give the totals of one uninterrupted run without recovery.
func TestStateMemory_RescaleThreeFiveOneMatchesOneRun(t *testing.T) {
	dir := t.TempDir()
	all := filepath.Join(dir, "all.txt")
	for i := 0; i < 3; i++ {
		writeVocab(t, all, 40000, 200000, int64(i), i > 0)
	}
	one := filepath.Join(dir, "one.csv")
	mustRun(t, "run", "wordcount", "-i", all, "-o", one, "-w", "2")
	for _, tc := range []struct {
		name string
		on   []bool // the flag, per run
	}{
		{"flag-every-run", []bool{true, true, true}},
		{"flag-on-off-on", []bool{true, false, true}},
		{"flag-off-on-on", []bool{false, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			in, out, rec := filepath.Join(d, "in.txt"), filepath.Join(d, "out.csv"), filepath.Join(d, "rec")
			os.Mkdir(rec, 0o755)
			mustRun(t, "recovery", "init", rec, "4")
			for i, w := range []string{"3", "5", "1"} {
				writeVocab(t, in, 40000, 200000, int64(i), i > 0)
				args := []string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "50ms", "-b", "100ms", "-w", w}
				if tc.on[i] {
					args = append(args, "--state-memory", "4MiB")
				}
				mustRun(t, args...)
			}
			sameTotals(t, out, one, tc.name+", 3->5->1 workers")
		})
	}
}

// SIGKILLs at random points of runs with the flag (and random worker
// counts), each resumed with it: the output holds the lines of one
// uninterrupted run, exactly once.
func TestStateMemory_SIGKILLLoopMatchesUninterrupted(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	writeVocab(t, in, 150000, 200000, 7, false)
	want := filepath.Join(dir, "want.csv")
	mustRun(t, "run", "wordcount", "-i", in, "-o", want, "-w", "2")
	crashTrials(t, dir, 2, []string{"run", "wordcount", "-i", in, "-o", "OUT", "-r", "REC", "-s", "50ms", "-b", "0", "--state-memory", "4MiB"}, func(trial, kills int, out string) {
		sameLines(t, out, want, fmt.Sprintf("trial %d after %d kills", trial, kills))
		sameTotals(t, out, want, fmt.Sprintf("trial %d after %d kills", trial, kills))
	})
}

// logstats over many keys with the flag: open windows are state, so after
// a kill the resumed run reads them back from the partitions (evicted or
// never loaded) and closes them, when a later line of the key passes them
// or at end of input, exactly as one uninterrupted run does.
func TestStateMemory_WindowsCloseAfterResume(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.log")
	writeLogLines(t, in, 200000, 60000, 3)
	want := filepath.Join(dir, "want.csv")
	mustRun(t, "run", "logstats", "-i", in, "-o", want, "-w", "2", "--window", "10s", "--lateness", "1s")
	crashTrials(t, dir, 2, []string{"run", "logstats", "-i", in, "-o", "OUT", "-r", "REC", "-s", "30ms", "-b", "0", "--window", "10s", "--lateness", "1s", "--state-memory", "4MiB"}, func(trial, kills int, out string) {
		sameLines(t, out, want, fmt.Sprintf("trial %d after %d kills", trial, kills))
	})
}

// writeLogLines writes logstats input: lines of one millisecond each, up
// to 2 s out of order, over keys k0..k(keys-1).
func writeLogLines(t *testing.T, path string, lines, keys int, seed int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := rand.New(rand.NewSource(seed))
	for i := 0; i < lines; i++ {
		ts := base.Add(time.Duration(i)*time.Millisecond - time.Duration(r.Intn(2000))*time.Millisecond)
		fmt.Fprintf(w, "%s k%d %d\n", ts.Format(time.RFC3339Nano), r.Intn(keys), r.Intn(1000))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// A state built without a bound is continued under a Go memory limit
// below its size, with the flag: the continuation touches every key again,
// succeeds, stays well below the memory the state took, and gives the
// totals of one run.
func TestStateMemory_ContinuesUnderMemoryLimitBelowStateSize(t *testing.T) {
	dir := t.TempDir()
	in, out, rec := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv"), filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	mustRun(t, "recovery", "init", rec, "4")
	// 800k distinct words, then every one of them again.
	writeDistinctWords(t, in, 0, 800000, false)
	args := []string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "0", "-w", "2"}
	first := runEnv(t, nil, args...)
	writeDistinctWords(t, in, 0, 800000, true)
	const limit = 64 << 20
	second := runEnv(t, []string{fmt.Sprintf("GOMEMLIMIT=%d", limit)}, append(args, "--state-memory", "16MiB")...)
	t.Logf("unbounded first run: %d MiB peak RSS; continuation under GOMEMLIMIT=64MiB: %d MiB", first.maxRSS>>20, second.maxRSS>>20)
	if first.maxRSS < 2*limit {
		t.Fatalf("the state took %d MiB unbounded: not above the limit enough to show anything", first.maxRSS>>20)
	}
	// The bound holds only roughly when every key is changed at once: the
	// keys written early wait in memory until their writes are readable
	// (measured: 154-155 MiB, against 192-252 MiB unbounded as the
	// collector's timing goes: CI once saw 155 against 192).
	if second.maxRSS > first.maxRSS*9/10 {
		t.Fatalf("continuation peaked at %d MiB, the unbounded run at %d MiB: the bound did not hold", second.maxRSS>>20, first.maxRSS>>20)
	}
	totals := lastTotals(t, out)
	if len(totals) != 800000 {
		t.Fatalf("%d words in the output, want 800000", len(totals))
	}
	for w, c := range totals {
		if c != "2" {
			t.Fatalf("word %s: total %s, want 2", w, c)
		}
	}
}

// writeDistinctWords writes n lines, one distinct word each (from word
// number first on).
func writeDistinctWords(t *testing.T, path string, first, n int, appendTo bool) {
	t.Helper()
	flag := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if appendTo {
		flag = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := first; i < first+n; i++ {
		w.WriteString("key")
		w.WriteString(strings.ToLower(letterWord(i)))
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// A fresh run over many more distinct words than the bound holds keeps its
// live Go heap near the bound from its first epoch on, not in proportion
// to the keys: the cache, not the heap limit the flag sets, is what bounds
// the state (GOMEMLIMIT is set, so the flag sets none). The garbage
// collector's trace gives the live heap after every cycle; it does not
// depend on the machine's speed, as RSS and CPU do (though the peak of
// the unbounded run moves with the moments its cycles fall on). Before the
// fix, over 600k words, the bounded run's live heap peaked at 112-145 MB,
// the unbounded run's at 79-116 MB; after it the bounded run's at 28 MB.
func TestStateMemory_FreshRunLiveHeapFollowsBound(t *testing.T) {
	const words = 800000
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	writeDistinctWords(t, in, 0, words, false)
	run := func(name string, flags ...string) int {
		t.Helper()
		rec, out := filepath.Join(dir, "rec-"+name), filepath.Join(dir, "out-"+name+".csv")
		os.Mkdir(rec, 0o755)
		mustRun(t, "recovery", "init", rec, "4")
		args := append([]string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "0", "-w", "2"}, flags...)
		cmd := exec.Command(flowrunBin, args...)
		cmd.Env = append(os.Environ(), "GOMEMLIMIT=1GiB", "GODEBUG=gctrace=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("flowrun %v: %v\n%s", args, err, lastLines(stderr.String(), 20))
		}
		totals := lastTotals(t, out)
		if len(totals) != words {
			t.Fatalf("%s: %d words in the output, want %d", name, len(totals), words)
		}
		for w, c := range totals {
			if c != "1" {
				t.Fatalf("%s: word %s: total %s, want 1", name, w, c)
			}
		}
		return peakLiveHeap(t, stderr.String())
	}
	unbounded := run("unbounded")
	bounded := run("bounded", "--state-memory", "8MiB")
	t.Logf("peak live heap over %d distinct words: %d MB unbounded, %d MB with --state-memory 8MiB", words, unbounded, bounded)
	// The bound, plus what the rest of the run holds: the recovery queue
	// (a quarter of the bound, at least 4 MiB), the index of segments not
	// compacted yet, batches in flight.
	const limit = 56
	if bounded > limit {
		t.Fatalf("with --state-memory 8MiB the live heap peaked at %d MB (unbounded: %d MB), want at most %d MB", bounded, unbounded, limit)
	}
	if unbounded < limit+16 {
		t.Fatalf("the unbounded run's live heap peaked at %d MB: not far enough above %d MB to show anything", unbounded, limit)
	}
}

// peakLiveHeap is the largest live heap, in MB, a GODEBUG=gctrace=1 trace
// reports ("gc N @…: … A->B->C MB": C is the heap marked live).
func peakLiveHeap(t *testing.T, trace string) int {
	t.Helper()
	peak, cycles := 0, 0
	for _, m := range gcTraceLive.FindAllStringSubmatch(trace, -1) {
		n, err := strconv.Atoi(m[1])
		if err != nil {
			t.Fatal(err)
		}
		peak = max(peak, n)
		cycles++
	}
	if cycles == 0 {
		t.Fatalf("no garbage collection in the trace:\n%s", lastLines(trace, 20))
	}
	return peak
}

var gcTraceLive = regexp.MustCompile(`(?m)^gc \d+ @.* \d+->\d+->(\d+) MB`)

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// A continuation that runs long enough to compact inside its pass (a
// bound of 4MiB compacts every 256 KiB of new segments) changes 25k of a
// state's 800k keys, more than the bound holds; its end of input reads
// those it evicted back from the partitions (through their pass logs, or,
// where a log outgrew its share, the base), and every word's total is its
// count over the whole input. (Reading nothing from the logs lost about
// 850 totals.)
func TestStateMemory_ContinuationCompactedInItsPassGivesTotals(t *testing.T) {
	dir := t.TempDir()
	in, out, rec := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv"), filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	mustRun(t, "recovery", "init", rec, "4")
	writeDistinctWords(t, in, 0, 800000, false)
	args := []string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-b", "0", "-w", "2"}
	runEnv(t, nil, append(args, "-s", "1s")...)
	f, err := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	r := rand.New(rand.NewSource(2))
	for i := 0; i < 40000; i++ {
		for j := 0; j < 8; j++ {
			fmt.Fprintf(w, "key%s ", strings.ToLower(letterWord(r.Intn(25000))))
		}
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	runEnv(t, nil, append(args, "-s", "300ms", "--state-memory", "4MiB")...)

	want := map[string]int{}
	b, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range strings.Fields(string(b)) {
		want[strings.ToLower(w)]++
	}
	got := lastTotals(t, out)
	if len(got) != len(want) {
		t.Fatalf("%d words in the output, want %d", len(got), len(want))
	}
	for w, n := range want {
		if got[w] != strconv.Itoa(n) {
			t.Fatalf("word %s: total %s, want %d", w, got[w], n)
		}
	}
	// The continuation compacted inside its pass: its pass logs hold
	// segments, or the mark of a log given up.
	var segs, gaveUp int
	for p := 0; p < 4; p++ {
		db, err := recovery.OpenDB(filepath.Join(rec, fmt.Sprintf("part-%d.sqlite3", p)), true)
		if err != nil {
			t.Fatal(err)
		}
		var n, g int
		err = db.QueryRow(`SELECT count(*), count(*) FILTER (WHERE seq = 0) FROM passlog`).Scan(&n, &g)
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		segs, gaveUp = segs+n-g, gaveUp+g
	}
	if segs+gaveUp == 0 {
		t.Fatal("the continuation compacted nothing inside its pass: the test shows nothing")
	}
	t.Logf("pass logs: %d segments; %d of 4 given up", segs, gaveUp)
}
