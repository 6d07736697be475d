package recovery

import (
	"context"
	"fmt"
	"math/rand"
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
