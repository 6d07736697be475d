package bench

import (
	"bufio"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// outputSum is an order-independent digest of an output file: its line
// count and the sum of its lines' hashes (workers write lines in any order).
func outputSum(b *testing.B, path string) (lines int, sum uint64) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		h := fnv.New64a()
		h.Write(sc.Bytes())
		sum += h.Sum64()
		lines++
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return lines, sum
}

// medianOf returns the median of xs.
func medianOf(xs []float64) float64 { m, _, _ := medianSpread(xs); return m }

// BenchmarkStateMemory: issue 31's figures, from real flowrun processes.
//   - 4M distinct words, -w 2, 4 partitions, -s 1s -b 2s: --state-memory
//     64MiB against unbounded, alternated over 3 rounds from fresh
//     partitions: peak RSS (target <= 300 MiB) and the CPU ratio (target <=
//     2x), equal totals;
//   - a +1% continuation (40k lines, half old words) on each of those
//     states: CPU and RSS (target with the flag: <= 1.0 s CPU, <= 300 MiB).
//
// Medians of the rounds; each ratio is taken within one round.
func BenchmarkStateMemory(b *testing.B) {
	bin := buildFlowrun(b)
	rounds := max(b.N, 3)
	keys := 4_000_000
	if v := os.Getenv("FLOWKEEP_BENCH_KEYS"); v != "" {
		fmt.Sscan(v, &keys)
	}
	dir := b.TempDir()
	in := filepath.Join(dir, "in.txt")
	writeDistinct(b, in, 0, keys)
	args := func(d string, bound bool) []string {
		a := []string{"run", "wordcount", "-i", filepath.Join(d, "in.txt"), "-o", filepath.Join(d, "out.csv"),
			"-r", filepath.Join(d, "rec"), "-s", "1s", "-b", "2s", "-w", "2"}
		if bound {
			a = append(a, "--state-memory", "64MiB")
		}
		return a
	}
	type figures struct{ cpu, rss, contCPU, contRSS []float64 }
	var unb, mem figures
	var cpuRatio, rssRatio []float64
	for i := 0; i < rounds; i++ {
		var runs [2]procRun
		var sums [2]uint64
		var lines [2]int
		// Alternate which variant goes first.
		order := []bool{i%2 == 0, i%2 != 0}
		for _, bound := range order {
			d := filepath.Join(dir, fmt.Sprintf("round-%d-%v", i, bound))
			os.MkdirAll(filepath.Join(d, "rec"), 0o755)
			copyDir(b, in, filepath.Join(d, "in.txt"))
			runFlowrun(b, bin, "recovery", "init", filepath.Join(d, "rec"), "4")
			r := runFlowrun(b, bin, args(d, bound)...)
			j := 0
			f := &unb
			if bound {
				j, f = 1, &mem
			}
			runs[j] = r
			lines[j], sums[j] = outputSum(b, filepath.Join(d, "out.csv"))
			f.cpu = append(f.cpu, r.cpu.Seconds())
			f.rss = append(f.rss, float64(r.maxRSS)/(1<<20))
			// +1%: half old words, half new.
			writeDistinct(b, filepath.Join(d, "in.txt"), keys-keys/200, keys/100)
			c := runFlowrun(b, bin, args(d, bound)...)
			f.contCPU = append(f.contCPU, c.cpu.Seconds())
			f.contRSS = append(f.contRSS, float64(c.maxRSS)/(1<<20))
			b.Logf("round %d bound=%v: %.2fs cpu %d MiB; +1%%: %.2fs cpu %d MiB", i, bound, r.cpu.Seconds(), r.maxRSS>>20, c.cpu.Seconds(), c.maxRSS>>20)
			os.RemoveAll(d)
		}
		if lines[0] != lines[1] || sums[0] != sums[1] {
			b.Fatalf("round %d: output differs with --state-memory: %d lines (sum %x) against %d (sum %x)", i, lines[1], sums[1], lines[0], sums[0])
		}
		cpuRatio = append(cpuRatio, runs[1].cpu.Seconds()/runs[0].cpu.Seconds())
		rssRatio = append(rssRatio, float64(runs[1].maxRSS)/float64(runs[0].maxRSS))
	}
	b.ReportMetric(medianOf(mem.rss), "bounded-rss-MiB")
	b.ReportMetric(medianOf(unb.rss), "unbounded-rss-MiB")
	b.ReportMetric(medianOf(rssRatio), "rss-bounded/unbounded")
	b.ReportMetric(medianOf(mem.cpu), "bounded-cpu-s")
	b.ReportMetric(medianOf(unb.cpu), "unbounded-cpu-s")
	b.ReportMetric(medianOf(cpuRatio), "cpu-bounded/unbounded")
	b.ReportMetric(medianOf(mem.contCPU), "bounded-plus1%-cpu-s")
	b.ReportMetric(medianOf(mem.contRSS), "bounded-plus1%-rss-MiB")
	b.ReportMetric(medianOf(unb.contCPU), "unbounded-plus1%-cpu-s")
	b.ReportMetric(medianOf(unb.contRSS), "unbounded-plus1%-rss-MiB")
	for _, m := range []struct {
		name string
		xs   []float64
	}{{"cpu ratio", cpuRatio}, {"rss ratio", rssRatio}, {"bounded +1% cpu", mem.contCPU}, {"unbounded +1% cpu", unb.contCPU}} {
		med, lo, hi := medianSpread(m.xs)
		b.Logf("%s: median %.2f (%.2f..%.2f)", m.name, med, lo, hi)
	}
}

// buildFlowrunAt builds flowrun from the tree of git revision rev (e.g.
// main: the figures "before" this branch), exported with git archive.
func buildFlowrunAt(b *testing.B, rev string) string {
	b.Helper()
	src := filepath.Join(b.TempDir(), "src")
	os.Mkdir(src, 0o755)
	arch := exec.Command("sh", "-c", fmt.Sprintf("git archive %q | tar -x -C %q", rev, src))
	arch.Dir = ".."
	if out, err := arch.CombinedOutput(); err != nil {
		b.Fatalf("git archive %s: %v\n%s", rev, err, out)
	}
	bin := filepath.Join(b.TempDir(), "flowrun-"+rev)
	build := exec.Command("go", "build", "-o", bin, "./cmd/flowrun")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build %s: %v\n%s", rev, err, out)
	}
	return bin
}

// BenchmarkStateMemoryWithoutFlag: issue 31's "unchanged without the
// flag" figures. wordcount with recovery (-w 2 -s 1s -b 2s, 4 fresh
// partitions) over 2M lines of a 10k and a 50k Zipf vocabulary and of 1M
// words drawn uniformly, by this tree's flowrun and by one built from
// FLOWKEEP_BENCH_BEFORE (default main), alternated over 3 rounds: the
// median CPU and peak RSS ratios (target within 5%). Then a +1%
// continuation on a 1M-distinct-key state, unbounded, by both (target <=
// 0.5 s CPU).
func BenchmarkStateMemoryWithoutFlag(b *testing.B) {
	bin := buildFlowrun(b)
	rev := "main"
	if v := os.Getenv("FLOWKEEP_BENCH_BEFORE"); v != "" {
		rev = v
	}
	before := buildFlowrunAt(b, rev)
	rounds := max(b.N, 3)
	for _, tc := range namedInputs("zipf-10k", "zipf-50k", "uniform-1M") {
		b.Run(tc.name, func(b *testing.B) {
			dir := b.TempDir()
			in := filepath.Join(dir, "in.txt")
			if err := tc.write(in); err != nil {
				b.Fatal(err)
			}
			var cpu, rss []float64
			for i := 0; i < rounds; i++ {
				var got [2]procRun
				for _, j := range []int{i % 2, 1 - i%2} {
					exe := []string{before, bin}[j]
					rec := filepath.Join(dir, fmt.Sprintf("rec-%d-%d", i, j))
					os.Mkdir(rec, 0o755)
					runFlowrun(b, exe, "recovery", "init", rec, "4")
					out := filepath.Join(dir, fmt.Sprintf("out-%d-%d.csv", i, j))
					got[j] = runFlowrun(b, exe, "run", "wordcount", "-i", in, "-o", out, "-w", "2", "-r", rec, "-s", "1s", "-b", "2s")
					os.RemoveAll(rec)
					os.Remove(out)
				}
				cpu = append(cpu, got[1].cpu.Seconds()/got[0].cpu.Seconds())
				rss = append(rss, float64(got[1].maxRSS)/float64(got[0].maxRSS))
				b.Logf("round %d: before %.2fs cpu %d MiB, now %.2fs cpu %d MiB", i, got[0].cpu.Seconds(), got[0].maxRSS>>20, got[1].cpu.Seconds(), got[1].maxRSS>>20)
			}
			med, lo, hi := medianSpread(cpu)
			b.ReportMetric(med, "cpu-now/before")
			b.Logf("cpu now/before: median %.3f (%.3f..%.3f)", med, lo, hi)
			med, lo, hi = medianSpread(rss)
			b.ReportMetric(med, "rss-now/before")
			b.Logf("rss now/before: median %.3f (%.3f..%.3f)", med, lo, hi)
		})
	}
	b.Run("plus-1%-on-1M-keys", func(b *testing.B) {
		dir := b.TempDir()
		seed := filepath.Join(dir, "seed")
		os.MkdirAll(filepath.Join(seed, "rec"), 0o755)
		writeDistinct(b, filepath.Join(seed, "in.txt"), 0, 1_000_000)
		runFlowrun(b, bin, "recovery", "init", filepath.Join(seed, "rec"), "4")
		args := func(d string) []string {
			return []string{"run", "wordcount", "-i", filepath.Join(d, "in.txt"), "-o", filepath.Join(d, "out.csv"),
				"-r", filepath.Join(d, "rec"), "-s", "1s", "-b", "2s", "-w", "2"}
		}
		runFlowrun(b, before, args(seed)...)
		var cpu [2][]float64
		var rss [2][]float64
		for i := 0; i < rounds; i++ {
			for _, j := range []int{i % 2, 1 - i%2} {
				d := filepath.Join(dir, fmt.Sprintf("round-%d-%d", i, j))
				copyDir(b, seed, d)
				writeDistinct(b, filepath.Join(d, "in.txt"), 1_000_000-5_000, 10_000)
				r := runFlowrun(b, []string{before, bin}[j], args(d)...)
				cpu[j] = append(cpu[j], r.cpu.Seconds())
				rss[j] = append(rss[j], float64(r.maxRSS)/(1<<20))
				os.RemoveAll(d)
			}
		}
		b.ReportMetric(medianOf(cpu[0]), "before-cpu-s")
		b.ReportMetric(medianOf(cpu[1]), "now-cpu-s")
		b.ReportMetric(medianOf(rss[0]), "before-rss-MiB")
		b.ReportMetric(medianOf(rss[1]), "now-rss-MiB")
		b.Logf("+1%% on 1M keys: before cpu %v rss %v; now cpu %v rss %v", cpu[0], rss[0], cpu[1], rss[1])
	})
}
