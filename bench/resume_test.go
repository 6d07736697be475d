package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"
)

// writeDistinct writes n lines, one distinct word each, from word number
// first on (appending if the file exists).
func writeDistinct(b *testing.B, path string, first, n int) {
	b.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := first; i < first+n; i++ {
		w.WriteString("key")
		w.WriteString(LetterWord(i))
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	f.Close()
}

func copyDir(b *testing.B, from, to string) {
	b.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v: %s", err, out)
	}
}

func mediansOf(rs []procRun) (wall, cpu float64, spread string) {
	ws, cs := make([]float64, len(rs)), make([]float64, len(rs))
	for i, r := range rs {
		ws[i], cs[i] = r.wall.Seconds(), r.cpu.Seconds()
	}
	sort.Float64s(ws)
	sort.Float64s(cs)
	return ws[len(ws)/2], cs[len(cs)/2], fmt.Sprintf("wall %.2f..%.2f cpu %.2f..%.2f", ws[0], ws[len(ws)-1], cs[0], cs[len(cs)-1])
}

// BenchmarkResume: issues 13 and 20's resume figures, from real flowrun
// processes (median of 3 rounds; each round starts from a copy of the same
// partitions). A wordcount state of N distinct keys is built in one run
// (one bulk epoch; -s 1s, -b as named), then resumed:
//   - nothing-new: open, resume, load every key, end (issue 13: load < 3s);
//   - plus-1%: a continuation over 1% more input (issue 20: at 1M keys
//     <= 0.5s wall and <= 1.0s CPU; at 3M keys <= 1.5s wall).
func BenchmarkResume(b *testing.B) {
	bin := buildFlowrun(b)
	rounds := max(b.N, 3)
	for _, tc := range []struct {
		keys int
		b    string
	}{{1_000_000, "0"}, {1_000_000, "2s"}, {3_000_000, "0"}} {
		b.Run(fmt.Sprintf("%dM-keys/b=%s", tc.keys/1_000_000, tc.b), func(b *testing.B) {
			dir := b.TempDir()
			in := filepath.Join(dir, "in.txt")
			writeDistinct(b, in, 0, tc.keys)
			seed := filepath.Join(dir, "seed")
			os.Mkdir(seed, 0o755)
			rec := filepath.Join(seed, "rec")
			os.Mkdir(rec, 0o755)
			runFlowrun(b, bin, "recovery", "init", rec, "4")
			args := func(dir string) []string {
				return []string{"run", "wordcount", "-i", filepath.Join(dir, "in.txt"), "-o", filepath.Join(dir, "out.csv"),
					"-r", filepath.Join(dir, "rec"), "-s", "1s", "-b", tc.b, "-w", "2"}
			}
			copyDir(b, in, filepath.Join(seed, "in.txt"))
			runFlowrun(b, bin, args(seed)...)
			var nothing, more []procRun
			for i := 0; i < rounds; i++ {
				d := filepath.Join(dir, fmt.Sprintf("round-%d", i))
				copyDir(b, seed, d)
				nothing = append(nothing, runFlowrun(b, bin, args(d)...))
				writeDistinct(b, filepath.Join(d, "in.txt"), tc.keys-tc.keys/200, tc.keys/100) // half old keys, half new
				more = append(more, runFlowrun(b, bin, args(d)...))
				os.RemoveAll(d)
			}
			w, c, sp := mediansOf(nothing)
			b.ReportMetric(w, "nothing-new-wall-s")
			b.ReportMetric(c, "nothing-new-cpu-s")
			b.Logf("nothing new: %s", sp)
			w, c, sp = mediansOf(more)
			b.ReportMetric(w, "plus-1%-wall-s")
			b.ReportMetric(c, "plus-1%-cpu-s")
			b.Logf("plus 1%%: %s", sp)
		})
	}
}

// inspectHi returns the epoch every partition in rec can resume at (the
// lowest hi), or 0.
func inspectHi(bin, rec string) uint64 {
	out, err := exec.Command(bin, "recovery", "inspect", rec, "--json").Output()
	if err != nil {
		return 0
	}
	var rep struct {
		Partitions []struct {
			Hi uint64 `json:"hi"`
		} `json:"partitions"`
	}
	if json.Unmarshal(out, &rep) != nil || len(rep.Partitions) == 0 {
		return 0
	}
	lo := rep.Partitions[0].Hi
	for _, p := range rep.Partitions {
		lo = min(lo, p.Hi)
	}
	return lo
}

// BenchmarkKillToDurable: issue 13 and 20's restart figure. A wordcount over
// 1M distinct words (then more input, so the run goes on) with -s 1s -b 2s
// is killed with SIGKILL once its state holds them; the restarted run is
// timed from its start to its first new durable epoch, as `flowrun
// recovery inspect` sees it (target < 5s). Median of 3 rounds.
func BenchmarkKillToDurable(b *testing.B) {
	bin := buildFlowrun(b)
	rounds := max(b.N, 3)
	var times []float64
	for i := 0; i < rounds; i++ {
		dir := b.TempDir()
		in := filepath.Join(dir, "in.txt")
		writeDistinct(b, in, 0, 1_000_000)
		writeDistinct(b, in, 0, 4_000_000) // the first 1M again, and 3M more: a run of several epochs
		rec := filepath.Join(dir, "rec")
		os.Mkdir(rec, 0o755)
		runFlowrun(b, bin, "recovery", "init", rec, "4")
		args := []string{"run", "wordcount", "-i", in, "-o", filepath.Join(dir, "out.csv"), "-r", rec, "-s", "1s", "-b", "2s", "-w", "2"}
		first := exec.Command(bin, args...)
		if err := first.Start(); err != nil {
			b.Fatal(err)
		}
		// Kill once a few epochs are durable.
		deadline := time.Now().Add(60 * time.Second)
		for inspectHi(bin, rec) < 4 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		first.Process.Signal(syscall.SIGKILL)
		first.Wait()
		resumeAt := inspectHi(bin, rec)
		start := time.Now()
		second := exec.Command(bin, args...)
		if err := second.Start(); err != nil {
			b.Fatal(err)
		}
		for inspectHi(bin, rec) <= resumeAt {
			if time.Since(start) > 120*time.Second {
				b.Fatal("no new durable epoch after 2 minutes")
			}
			time.Sleep(20 * time.Millisecond)
		}
		times = append(times, time.Since(start).Seconds())
		second.Process.Signal(syscall.SIGKILL)
		second.Wait()
	}
	sort.Float64s(times)
	b.ReportMetric(times[len(times)/2], "to-first-durable-s")
	b.Logf("restart to first new durable epoch: %v s", times)
}
