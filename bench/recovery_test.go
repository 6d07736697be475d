package bench

import (
	"bufio"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"
)

// procRun is what one flowrun process used.
type procRun struct {
	wall, cpu time.Duration
	maxRSS    int64 // bytes
}

// runFlowrun runs bin with args and returns its wall time, CPU time
// (user+sys) and peak resident memory, from the kernel's accounting.
func runFlowrun(b *testing.B, bin string, args ...string) procRun {
	b.Helper()
	cmd := exec.Command(bin, args...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%v: %v\n%s", args, err, out)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return procRun{wall: time.Since(start), cpu: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), maxRSS: ru.Maxrss * 1024}
}

// writeUniformInput writes lines of `words` words drawn uniformly from
// `distinct` distinct words.
func writeUniformInput(path string, lines, words, distinct int, seed int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	r := rand.New(rand.NewSource(seed))
	for i := 0; i < lines; i++ {
		for j := 0; j < words; j++ {
			if j > 0 {
				w.WriteByte(' ')
			}
			w.WriteString("w")
			w.WriteString(LetterWord(r.Intn(distinct)))
		}
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// namedInput is a wordcount input the benchmarks compare runs over.
type namedInput struct {
	name  string
	write func(path string) error
}

// wordInputs are the named inputs, of FLOWKEEP_BENCH_LINES lines (2M by
// default) of 10 words: a 10k- or 50k-word Zipf vocabulary, or 500k or 1M
// distinct words drawn uniformly.
func namedInputs(names ...string) []namedInput {
	lines := 2_000_000
	if v := os.Getenv("FLOWKEEP_BENCH_LINES"); v != "" {
		fmt.Sscan(v, &lines)
	}
	all := map[string]func(path string) error{
		"zipf-10k":     func(p string) error { _, err := WriteWordInput(p, lines, 10, 10_000, 1); return err },
		"zipf-50k":     func(p string) error { _, err := WriteWordInput(p, lines, 10, 50_000, 1); return err },
		"uniform-500k": func(p string) error { return writeUniformInput(p, lines, 10, 500_000, 1) },
		"uniform-1M":   func(p string) error { return writeUniformInput(p, lines, 10, 1_000_000, 1) },
	}
	out := make([]namedInput, len(names))
	for i, n := range names {
		out[i] = namedInput{n, all[n]}
	}
	return out
}

type ratios struct{ cpu, wall, rss []float64 }

func medianSpread(xs []float64) (float64, float64, float64) {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

// BenchmarkRecoveryCost: issue 13's figures. wordcount as a real flowrun
// process over 2M lines (20M words) of a 10k- and a 50k-word Zipf
// vocabulary and of 500k and 1M distinct words drawn uniformly, with recovery on
// (-w 2 -s 1s -b 2s, 4 fresh partitions) and off (-w 2 -s 1s: the same
// epochs), alternated over 3 rounds.
// Reports the median on/off ratio of CPU (user+sys), wall time and peak RSS,
// with the lowest and highest of the rounds. Targets: CPU <= 1.10x (10k),
// 1.20x (50k), 1.5x (1M distinct); peak RSS <= 1.5x, and <= 1.3x at 500k
// distinct keys (issue 29).
func BenchmarkRecoveryCost(b *testing.B) {
	bin := buildFlowrun(b)
	rounds := max(b.N, 3)
	for _, tc := range namedInputs("zipf-10k", "zipf-50k", "uniform-500k", "uniform-1M") {
		b.Run(tc.name, func(b *testing.B) {
			dir := b.TempDir()
			in := filepath.Join(dir, "in.txt")
			if err := tc.write(in); err != nil {
				b.Fatal(err)
			}
			var r ratios
			for i := 0; i < rounds; i++ {
				outOff := filepath.Join(dir, fmt.Sprintf("off-%d.csv", i))
				off := runFlowrun(b, bin, "run", "wordcount", "-i", in, "-o", outOff, "-w", "2", "-s", "1s")
				rec := filepath.Join(dir, fmt.Sprintf("rec-%d", i))
				os.Mkdir(rec, 0o755)
				runFlowrun(b, bin, "recovery", "init", rec, "4")
				outOn := filepath.Join(dir, fmt.Sprintf("on-%d.csv", i))
				on := runFlowrun(b, bin, "run", "wordcount", "-i", in, "-o", outOn, "-w", "2", "-r", rec, "-s", "1s", "-b", "2s")
				r.cpu = append(r.cpu, on.cpu.Seconds()/off.cpu.Seconds())
				r.wall = append(r.wall, on.wall.Seconds()/off.wall.Seconds())
				r.rss = append(r.rss, float64(on.maxRSS)/float64(off.maxRSS))
				b.Logf("round %d: off %.2fs wall %.2fs cpu %dMB, on %.2fs wall %.2fs cpu %dMB", i,
					off.wall.Seconds(), off.cpu.Seconds(), off.maxRSS>>20, on.wall.Seconds(), on.cpu.Seconds(), on.maxRSS>>20)
				os.RemoveAll(rec)
				os.Remove(outOff)
				os.Remove(outOn)
			}
			for _, m := range []struct {
				name string
				xs   []float64
			}{{"cpu", r.cpu}, {"wall", r.wall}, {"rss", r.rss}} {
				med, lo, hi := medianSpread(m.xs)
				b.ReportMetric(med, m.name+"-on/off")
				b.ReportMetric(lo, m.name+"-min")
				b.ReportMetric(hi, m.name+"-max")
			}
		})
	}
}
