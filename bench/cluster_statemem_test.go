package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/freeport"
)

// runCluster runs bin with args as one process per directory of dirs (its
// -r), as a cluster; it returns the wall time until the last ended, the
// CPU time of all of them and the peak RSS of the largest.
func runCluster(b *testing.B, bin string, dirs []string, args ...string) procRun {
	b.Helper()
	addrs, err := freeport.Addrs(len(dirs))
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var run procRun
	var wg sync.WaitGroup
	start := time.Now()
	for i, d := range dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(bin, append(args, "-r", d, "--addresses", strings.Join(addrs, ","), "--process-id", fmt.Sprint(i))...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				b.Errorf("process %d: %v: %v\n%s", i, args, err, out)
				return
			}
			ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			mu.Lock()
			run.cpu += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			run.maxRSS = max(run.maxRSS, ru.Maxrss*1024)
			mu.Unlock()
		}()
	}
	wg.Wait()
	run.wall = time.Since(start)
	if b.Failed() {
		b.FailNow()
	}
	return run
}

// BenchmarkClusterStateMemory: issue 31's cluster figures, from real
// flowrun processes. wordcount over FLOWKEEP_BENCH_KEYS distinct words
// (default 2M) on 4 partitions, -s 1s -b 2s:
//   - as 2 processes x 1 worker (2 partitions in each one's directory),
//     with --state-memory 64MiB on each against unbounded: the CPU ratio
//     (both processes) and the peak RSS of the larger process, equal
//     outputs;
//   - the same bounded run as 1 process x 2 workers: the cluster's CPU
//     over it is what routing commits and lookups between processes costs;
//   - a +1% continuation (half of it words seen before) of each state: CPU
//     and RSS. Its lookups of the old words go to the process owning each
//     word's partition (the other one for about half of them), and no run
//     loads the keys it does not touch.
//
// 3 rounds, the order rotated, medians; each ratio is taken within a round.
func BenchmarkClusterStateMemory(b *testing.B) {
	bin := buildFlowrun(b)
	rounds := max(b.N, 3)
	keys := 2_000_000
	if v := os.Getenv("FLOWKEEP_BENCH_KEYS"); v != "" {
		fmt.Sscan(v, &keys)
	}
	dir := b.TempDir()
	in := filepath.Join(dir, "in.txt")
	writeDistinct(b, in, 0, keys)
	type variant struct {
		name    string
		cluster bool
		bound   bool
	}
	variants := []variant{{"cluster-unbounded", true, false}, {"cluster-64MiB", true, true}, {"single-64MiB", false, true}}
	type figures struct{ cpu, rss, contCPU, contRSS []float64 }
	figs := map[string]*figures{}
	for _, v := range variants {
		figs[v.name] = &figures{}
	}
	var cpuRatio, rssRatio, routeRatio, contRoute []float64
	for i := 0; i < rounds; i++ {
		runs := map[string][2]procRun{}
		sums := map[string]uint64{}
		for j := range variants {
			v := variants[(i+j)%len(variants)]
			d := filepath.Join(dir, fmt.Sprintf("round-%d-%s", i, v.name))
			recs := []string{filepath.Join(d, "a"), filepath.Join(d, "b")}
			for _, r := range recs {
				os.MkdirAll(r, 0o755)
			}
			runFlowrun(b, bin, "recovery", "init", recs[0], "4")
			for _, p := range []string{"part-2.sqlite3", "part-3.sqlite3"} {
				if err := os.Rename(filepath.Join(recs[0], p), filepath.Join(recs[1], p)); err != nil {
					b.Fatal(err)
				}
			}
			copyDir(b, in, filepath.Join(d, "in.txt"))
			args := []string{"run", "wordcount", "-i", filepath.Join(d, "in.txt"), "-o", filepath.Join(d, "out.csv"), "-s", "1s", "-b", "2s"}
			if v.bound {
				args = append(args, "--state-memory", "64MiB")
			}
			run := func() procRun {
				if v.cluster {
					return runCluster(b, bin, recs, append(args, "-w", "1")...)
				}
				return runFlowrun(b, bin, append(args, "-w", "2", "-r", recs[0], "-r", recs[1])...)
			}
			first := run()
			// +1%: half old words, half new.
			writeDistinct(b, filepath.Join(d, "in.txt"), keys-keys/200, keys/100)
			cont := run()
			_, sums[v.name] = outputSum(b, filepath.Join(d, "out.csv"))
			runs[v.name] = [2]procRun{first, cont}
			f := figs[v.name]
			f.cpu = append(f.cpu, first.cpu.Seconds())
			f.rss = append(f.rss, float64(first.maxRSS)/(1<<20))
			f.contCPU = append(f.contCPU, cont.cpu.Seconds())
			f.contRSS = append(f.contRSS, float64(cont.maxRSS)/(1<<20))
			b.Logf("round %d %s: %.2fs cpu, %d MiB; +1%%: %.2fs cpu, %d MiB", i, v.name, first.cpu.Seconds(), first.maxRSS>>20, cont.cpu.Seconds(), cont.maxRSS>>20)
			os.RemoveAll(d)
		}
		for _, v := range variants[1:] {
			if sums[v.name] != sums[variants[0].name] {
				b.Fatalf("round %d: %s's output differs from %s's", i, v.name, variants[0].name)
			}
		}
		u, m, s := runs["cluster-unbounded"], runs["cluster-64MiB"], runs["single-64MiB"]
		cpuRatio = append(cpuRatio, m[0].cpu.Seconds()/u[0].cpu.Seconds())
		rssRatio = append(rssRatio, float64(m[0].maxRSS)/float64(u[0].maxRSS))
		routeRatio = append(routeRatio, m[0].cpu.Seconds()/s[0].cpu.Seconds())
		contRoute = append(contRoute, m[1].cpu.Seconds()/s[1].cpu.Seconds())
	}
	for _, v := range variants {
		f := figs[v.name]
		b.ReportMetric(medianOf(f.cpu), v.name+"-cpu-s")
		b.ReportMetric(medianOf(f.rss), v.name+"-rss-MiB")
		b.ReportMetric(medianOf(f.contCPU), v.name+"-plus1%-cpu-s")
		b.ReportMetric(medianOf(f.contRSS), v.name+"-plus1%-rss-MiB")
	}
	b.ReportMetric(medianOf(cpuRatio), "cluster-cpu-bounded/unbounded")
	b.ReportMetric(medianOf(rssRatio), "cluster-rss-bounded/unbounded")
	b.ReportMetric(medianOf(routeRatio), "bounded-cpu-cluster/single")
	b.ReportMetric(medianOf(contRoute), "bounded-plus1%-cpu-cluster/single")
	for _, m := range []struct {
		name string
		xs   []float64
	}{{"cluster cpu bounded/unbounded", cpuRatio}, {"cluster rss bounded/unbounded", rssRatio}, {"bounded cpu cluster/single", routeRatio}, {"bounded +1% cpu cluster/single", contRoute}} {
		med, lo, hi := medianSpread(m.xs)
		b.Logf("%s: median %.2f (%.2f..%.2f)", m.name, med, lo, hi)
	}
}
