package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// appendDistinct appends n lines of one word each, word(0) .. word(n-1).
func appendDistinct(t *testing.T, path string, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := 0; i < n; i++ {
		w.WriteString(word(i))
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// lastTotals is each word's last total in a wordcount output file.
func lastTotals(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	last := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		w, n, _ := strings.Cut(l, ",")
		last[w] = n
	}
	return last
}

// peakRSS runs bin with env added and returns its output and peak RSS in
// bytes (the kernel's accounting), failing the test unless it succeeds.
func peakRSS(t *testing.T, env []string, bin string, args ...string) (string, int64) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.String())
	}
	return out.String(), cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss * 1024
}

// Drill 12: the machine is lost, and the only one left has less memory
// than the flow's state took. The flow is restored onto it from its
// backup, under a Go memory limit below the state's size, and continues
// with --state-memory: every total is right, and neither the restore nor
// the continuation needs the memory the state took.
func TestDrill12_RestoreOntoASmallerMachine(t *testing.T) {
	began := time.Now()
	dir := t.TempDir()
	url := "file://" + filepath.Join(dir, "bucket")
	rec, in, out := filepath.Join(dir, "rec"), filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	initRec(t, rec, 4)
	const words = 800_000
	appendDistinct(t, in, words)
	args := func(rec string, more ...string) []string {
		return append([]string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "0", "-w", "2"}, more...)
	}
	_, first := peakRSS(t, nil, flowrunBin, args(rec)...)
	mustCmd(t, nil, backupBin, "backup", "-r", rec, "--to", url)
	if err := os.RemoveAll(rec); err != nil {
		t.Fatal(err)
	}

	const limit = 64 << 20
	small := []string{"GOMEMLIMIT=64MiB"}
	if first < 2*limit {
		t.Fatalf("the state took %d MiB: not above the limit enough to show anything", first>>20)
	}
	restored := filepath.Join(dir, "small")
	said, restore := peakRSS(t, small, backupBin, "restore", "--from", url, "--to", restored)
	appendDistinct(t, in, words) // every word once more
	_, cont := peakRSS(t, small, flowrunBin, args(restored, "--state-memory", "16MiB")...)
	t.Logf("first run %d MiB; restore %d MiB and continuation %d MiB under GOMEMLIMIT=64MiB", first>>20, restore>>20, cont>>20)
	for what, rss := range map[string]int64{"restore": restore, "continuation": cont} {
		if rss > first*4/5 {
			t.Errorf("the %s peaked at %d MiB, the first run at %d MiB: it needed the memory the state took", what, rss>>20, first>>20)
		}
	}
	last := lastTotals(t, out)
	if len(last) != words {
		t.Fatalf("%d words in the output, want %d", len(last), words)
	}
	for w, n := range last {
		if n != "2" {
			t.Fatalf("word %s: total %s after the restore and the continuation, want 2\nrestore said:\n%s", w, n, said)
		}
	}
	drillLog(t, began, "nothing (every total 2 after the restore)")
}

// Drill 13: a base backup, a continuation that compacts (under a memory
// bound, in its pass), an incremental (delta) backup, the machine lost,
// the flow restored from the base and the delta and continued: every
// total is right. (Before the fix 1,102 of 400k words resumed from the
// base backup's counts, and verify --deep said healthy: the restored
// partition's compaction point was lowered below the delta's base rows,
// and reads on demand took the base backup's older segments over them.)
func TestDrill13_RestoreFromABaseAndADeltaAfterCompactions(t *testing.T) {
	began := time.Now()
	dir := t.TempDir()
	url := "file://" + filepath.Join(dir, "bucket")
	rec, in, out := filepath.Join(dir, "rec"), filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	initRec(t, rec, 2)
	appendDistinct(t, in, 400_000)
	run := func(rec string, more ...string) {
		mustCmd(t, nil, flowrunBin, append([]string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "300ms", "-b", "0", "-w", "2"}, more...)...)
	}
	run(rec)
	appendWordsFrom(t, in, 40_000, 0, 25_000, 41)
	run(rec, "--state-memory", "4MiB")
	mustCmd(t, nil, backupBin, "backup", "-r", rec, "--to", url)
	appendWordsFrom(t, in, 40_000, 0, 30_000, 42)
	run(rec, "--state-memory", "4MiB")
	said := mustCmd(t, nil, backupBin, "backup", "-r", rec, "--to", url)
	if !strings.Contains(said, "delta backup") {
		t.Fatalf("the second backup wrote no delta: the drill shows nothing\n%s", said)
	}
	if err := os.RemoveAll(rec); err != nil {
		t.Fatal(err)
	}
	restored := filepath.Join(dir, "restored")
	mustCmd(t, nil, backupBin, "restore", "--from", url, "--to", restored)
	appendWordsFrom(t, in, 2_000, 0, 25_000, 43)
	run(restored)

	want := map[string]int{}
	b, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range strings.Fields(string(b)) {
		want[w]++
	}
	got := lastTotals(t, out)
	var wrong []string
	for w, n := range want {
		if got[w] != strconv.Itoa(n) {
			wrong = append(wrong, fmt.Sprintf("%s: %s, want %d", w, got[w], n))
		}
	}
	if len(wrong) > 0 || len(got) != len(want) {
		t.Fatalf("after the restore from a base and a delta, %d of %d totals are wrong (%d words in the output), e.g. %v", len(wrong), len(want), len(got), wrong[:min(len(wrong), 5)])
	}
	drillLog(t, began, "nothing (every total right after a restore from a base and a delta)")
}
