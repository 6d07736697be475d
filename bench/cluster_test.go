package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/freeport"
)

func buildFlowrun(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "flowrun")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/flowrun").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// runProcs runs wordcount as len(ids) processes of w workers and returns the
// wall time until the last one finished.
func runProcs(b *testing.B, bin, in, out string, procs, w int) time.Duration {
	wall, _ := runProcsEnv(b, bin, in, out, procs, w, nil)
	return wall
}

// runProcsEnv is runProcs with env added to the processes' environment; it
// also returns the CPU time (user+system) the processes used together.
func runProcsEnv(b *testing.B, bin, in, out string, procs, w int, env []string) (wall, cpu time.Duration) {
	b.Helper()
	os.Remove(out)
	addrs, err := freeport.Addrs(procs)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < procs; i++ {
		args := []string{"run", "wordcount", "-i", in, "-o", out, "-w", fmt.Sprint(w)}
		if procs > 1 {
			args = append(args, "--addresses", strings.Join(addrs, ","), "--process-id", fmt.Sprint(i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(bin, args...)
			cmd.Env = append(os.Environ(), env...)
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Errorf("%v: %s", err, out)
				return
			}
			mu.Lock()
			cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			mu.Unlock()
		}()
	}
	wg.Wait()
	return time.Since(start), cpu
}

// BenchmarkClusterWordcount: issue 8's figure. wordcount over the generated
// 1M-line input as 2 processes x 1 worker and as 1 process x 2 workers (real
// processes, alternating); reports both rates and their ratio (target >= 0.6).
func BenchmarkClusterWordcount(b *testing.B) {
	bin := buildFlowrun(b)
	in, words := wordInput(b)
	dir := b.TempDir()
	var one, two []time.Duration
	for i := 0; i < max(b.N, 5); i++ {
		one = append(one, runProcs(b, bin, in, filepath.Join(dir, "one.csv"), 1, 2))
		two = append(two, runProcs(b, bin, in, filepath.Join(dir, "two.csv"), 2, 1))
	}
	a, c := median(one), median(two)
	b.ReportMetric(float64(words)/a.Seconds(), "words/s-1x2")
	b.ReportMetric(float64(words)/c.Seconds(), "words/s-2x1")
	b.ReportMetric(a.Seconds()/c.Seconds(), "2x1/1x2")
}

// BenchmarkClusterSecret: the cost of sealing every frame (security review,
// finding 7). wordcount over a generated 3M-line input (30M words, about
// 2.5s a run; FLOWKEEP_BENCH_LINES changes it) as 2 processes x 1 worker,
// with a cluster secret (FLOWRUN_CLUSTER_SECRET: every frame after the
// handshake sealed with AES-256-GCM) and without, alternating, 7 rounds of
// each; reports both rates and the medians' ratios, secret/none, of wall
// time (target <= 1.10) and of the two processes' CPU time. Each round's
// times are printed.
func BenchmarkClusterSecret(b *testing.B) {
	bin := buildFlowrun(b)
	lines := 3_000_000
	if v := os.Getenv("FLOWKEEP_BENCH_LINES"); v != "" {
		fmt.Sscan(v, &lines)
	}
	in := filepath.Join(b.TempDir(), "words.txt")
	words, err := WriteWordInput(in, lines, benchWords, benchVocab, 1)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	secret := []string{"FLOWRUN_CLUSTER_SECRET=bench-secret-0123456789abcdef"}
	var plainWall, sealedWall, plainCPU, sealedCPU []time.Duration
	rounds := max(b.N, 7)
	for i := 0; i < rounds; i++ {
		w, c := runProcsEnv(b, bin, in, filepath.Join(dir, "plain.csv"), 2, 1, nil)
		plainWall, plainCPU = append(plainWall, w), append(plainCPU, c)
		w, c = runProcsEnv(b, bin, in, filepath.Join(dir, "sealed.csv"), 2, 1, secret)
		sealedWall, sealedCPU = append(sealedWall, w), append(sealedCPU, c)
	}
	secs := func(ds []time.Duration) string {
		var parts []string
		for _, d := range ds {
			parts = append(parts, fmt.Sprintf("%.2f", d.Seconds()))
		}
		return strings.Join(parts, " ")
	}
	fmt.Fprintf(os.Stderr, "rounds (s, in order): wall none %s | secret %s; cpu none %s | secret %s\n",
		secs(plainWall), secs(sealedWall), secs(plainCPU), secs(sealedCPU))
	pw, sw, pc, sc := median(plainWall), median(sealedWall), median(plainCPU), median(sealedCPU)
	b.ReportMetric(float64(words)/pw.Seconds(), "words/s-none")
	b.ReportMetric(float64(words)/sw.Seconds(), "words/s-secret")
	b.ReportMetric(sw.Seconds()/pw.Seconds(), "wall-secret/none")
	b.ReportMetric(sc.Seconds()/pc.Seconds(), "cpu-secret/none")
}
