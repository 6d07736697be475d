package recovery

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// benchStore opens 4 fresh partitions and begins a run of one worker.
func benchStore(b *testing.B) *Store {
	b.Helper()
	ctx := context.Background()
	dir := b.TempDir()
	if err := Init(ctx, dir, 4); err != nil {
		b.Fatal(err)
	}
	st, err := Open(ctx, dir, Options{FlowName: "bench", Intervals: Intervals{Snapshot: time.Second, Backup: time.Second}})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.Begin(ctx, 1); err != nil {
		b.Fatal(err)
	}
	return st
}

// BenchmarkCommit measures writing one epoch of 10k changed keys to 4
// partitions (with GC at d=1).
func BenchmarkCommit10kKeys(b *testing.B) {
	ctx := context.Background()
	st := benchStore(b)
	keys := make([]StateKey, 10000)
	for i := range keys {
		keys[i] = StateKey(fmt.Sprintf("word%05d", i))
	}
	rand.New(rand.NewSource(1)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	cpu0 := cpuTime()
	val := []byte{12, 1}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := Epoch(i + 1)
		rows := make([]Row, len(keys))
		for k := range rows {
			rows[k] = Row{Step: "wordcount.count", Key: keys[k], Epoch: e, Value: val}
		}
		if err := st.Commit(ctx, 0, e+1, rows); err != nil {
			b.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N*len(keys))/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(b.N*len(keys))/(cpuTime()-cpu0).Seconds(), "rows/cpu-s")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWriteAndCompact is issue 13's per-key figure: CPU per changed key
// for committing epochs of 50k changed keys to 4 partitions, compaction
// included (every 8 epochs in slices, and at the end whatever is left),
// when every change is a new key (the worst case: every key costs a base
// insert) and when the same keys change every epoch. Target: <= 4 µs.
func BenchmarkWriteAndCompact(b *testing.B) {
	for _, distinct := range []bool{true, false} {
		name := "same-keys"
		if distinct {
			name = "distinct-keys"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			st := benchStore(b)
			const perEpoch, epochs = 50_000, 24
			val := []byte{12, 1}
			r := rand.New(rand.NewSource(1))
			all := make([][]Row, epochs+1)
			for e := Epoch(1); e <= epochs; e++ {
				rows := make([]Row, perEpoch)
				for k := range rows {
					id := k
					if distinct {
						id = int(e)*perEpoch + k
					}
					rows[k] = Row{Step: "wordcount.count", Key: StateKey(fmt.Sprintf("w%09d", id)), Epoch: e, Value: val}
				}
				r.Shuffle(len(rows), func(i, j int) { rows[i], rows[j] = rows[j], rows[i] })
				all[e] = rows
			}
			cpu0 := cpuTime()
			b.ResetTimer()
			for e := Epoch(1); e <= epochs; e++ {
				if err := st.Commit(ctx, 0, e+1, all[e]); err != nil {
					b.Fatal(err)
				}
			}
			if err := st.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			if err := st.Compact(ctx); err != nil {
				b.Fatal(err)
			}
			cpu := cpuTime() - cpu0
			b.StopTimer()
			st.Close()
			b.ReportMetric(float64(cpu.Nanoseconds())/1000/float64(perEpoch*epochs), "µs-cpu/key")
		})
	}
}

// BenchmarkScanAfterCompaction is end of input in a continuation whose
// compactions ran inside the pass: a flow ended with `stored` keys; a
// continuation changes `touched` of them over 3 epochs, compacts, and at
// end of input scans the keys changed after the previous end. Each round
// runs a continuation with the pass log and one without (copies of the
// same partitions; which goes first alternates), and reports, as medians
// of one run, the scan's CPU
// per touched key with the log, per stored key without, their ratio, and
// the ratio of the continuation's commit and compaction CPU (the log's
// cost).
func BenchmarkScanAfterCompaction(b *testing.B) {
	const stored = 1_000_000
	ctx := context.Background()
	key := func(i int) StateKey { return StateKey(fmt.Sprintf("w%09d", i)) }
	opts := Options{FlowName: "bench", Intervals: Intervals{Snapshot: time.Second, Backup: time.Second}}
	src := b.TempDir()
	if err := Init(ctx, src, 4); err != nil {
		b.Fatal(err)
	}
	st, err := Open(ctx, src, opts)
	if err != nil {
		b.Fatal(err)
	}
	rp, err := st.Begin(ctx, 1)
	if err != nil {
		b.Fatal(err)
	}
	e := rp.Epoch
	const per = 100_000
	for i := 0; i < stored; i += per {
		rows := make([]Row, 0, per)
		for k := i; k < i+per; k++ {
			rows = append(rows, Row{Step: "wc.count", Key: key(k), Epoch: e, Value: []byte{12, 1}})
		}
		if err := st.Commit(ctx, 0, e+1, rows); err != nil {
			b.Fatal(err)
		}
		e++
	}
	for _, f := range []func(context.Context) error{st.Flush, st.Compact, func(context.Context) error { return st.Close() }} {
		if err := f(ctx); err != nil {
			b.Fatal(err)
		}
	}
	// continuation runs one on a copy of src and returns the CPU of its
	// commits and compaction and of its scan, and the keys the scan found;
	// it counts the partitions whose pass log was given up.
	var gaveUp int
	continuation := func(touched int, log bool) (write, scan time.Duration, found int) {
		dir := b.TempDir()
		ents, err := os.ReadDir(src)
		if err != nil {
			b.Fatal(err)
		}
		for _, ent := range ents {
			data, err := os.ReadFile(filepath.Join(src, ent.Name()))
			if err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, ent.Name()), data, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		o := opts
		o.noPassLog = !log
		st, err := Open(ctx, dir, o)
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		rp, err := st.Begin(ctx, 1)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.OpenState(ctx, rp.Epoch, func(StepID) bool { return true }, true, func([]Row) error { return nil }); err != nil {
			b.Fatal(err)
		}
		r := rand.New(rand.NewSource(1))
		rows := make([]Row, touched)
		cpu0 := cpuTime()
		for e := rp.Epoch; e < rp.Epoch+3; e++ {
			for i := range rows {
				rows[i] = Row{Step: "wc.count", Key: key(r.Intn(stored)), Epoch: e, Value: []byte{12, 2}}
			}
			if err := st.Commit(ctx, 0, e+1, rows); err != nil {
				b.Fatal(err)
			}
		}
		if err := st.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		if err := st.Compact(ctx); err != nil {
			b.Fatal(err)
		}
		cpu1 := cpuTime()
		if err := st.ScanState(ctx, "wc.count", rp.Epoch-1, false, nil, func(rs []Row) error { found += len(rs); return nil }); err != nil {
			b.Fatal(err)
		}
		scan = cpuTime() - cpu1
		if log {
			for _, w := range st.writers {
				if w.kept < 0 {
					gaveUp++
				}
			}
		}
		return cpu1 - cpu0, scan, found
	}
	for _, touched := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("stored-%d/touched-%d", stored, touched), func(b *testing.B) {
			var scanLog, scanBase, writeRatio []float64
			gaveUp = 0
			for i := range max(b.N, 3) {
				var wl, sl, wb, sb time.Duration
				var nl, nb int
				if i%2 == 0 {
					wl, sl, nl = continuation(touched, true)
					wb, sb, nb = continuation(touched, false)
				} else {
					wb, sb, nb = continuation(touched, false)
					wl, sl, nl = continuation(touched, true)
				}
				if nl != nb || nl == 0 || nl > 3*touched {
					b.Fatalf("the scans found %d keys with the pass log and %d without, of %d touched", nl, nb, 3*touched)
				}
				scanLog = append(scanLog, float64(sl.Nanoseconds()))
				scanBase = append(scanBase, float64(sb.Nanoseconds()))
				writeRatio = append(writeRatio, float64(wl)/float64(wb))
			}
			med := func(xs []float64) float64 { slices.Sort(xs); return xs[len(xs)/2] }
			l, f := med(scanLog), med(scanBase)
			b.ReportMetric(l/float64(3*touched), "ns-cpu/touched-key(log)")
			b.ReportMetric(f/float64(stored), "ns-cpu/stored-key(base)")
			b.ReportMetric(l/f, "scan-log/base")
			b.ReportMetric(med(writeRatio), "write-log/base")
			b.ReportMetric(float64(gaveUp)/float64(len(writeRatio)), "logs-given-up/round")
		})
	}
}
