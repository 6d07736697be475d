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
	b.Helper()
	os.Remove(out)
	addrs, err := freeport.Addrs(procs)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < procs; i++ {
		args := []string{"run", "wordcount", "-i", in, "-o", out, "-w", fmt.Sprint(w)}
		if procs > 1 {
			args = append(args, "--addresses", strings.Join(addrs, ","), "--process-id", fmt.Sprint(i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
				b.Errorf("%v: %s", err, out)
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
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
