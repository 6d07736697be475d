package bench

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/flowrun"
	"github.com/flowkeep/flowkeep/flows"
	"github.com/flowkeep/flowkeep/recovery"
)

const (
	benchLines = 1_000_000
	benchWords = 10 // per line
	benchVocab = 50_000
)

func wordInput(b *testing.B) (string, int64) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "words.txt")
	n, err := WriteWordInput(path, benchLines, benchWords, benchVocab, 1)
	if err != nil {
		b.Fatal(err)
	}
	return path, n
}

// runWordcount runs wordcount once and returns its wall time.
func runWordcount(b *testing.B, in, dir string, workers int, rec core.Recovery, s time.Duration) time.Duration {
	b.Helper()
	out := filepath.Join(dir, "out.csv")
	os.Remove(out)
	f := flows.WordCount(flows.IO{Input: in, Output: out})
	start := time.Now()
	if _, err := core.Run(context.Background(), f, core.Config{Workers: workers, EpochInterval: s, Recovery: rec}); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkWordcount: issue 2's figure, words/s of wordcount over a
// generated 1M-line input with 2 workers and recovery off (target >= 3M/s).
func BenchmarkWordcount(b *testing.B) {
	in, words := wordInput(b)
	dir := b.TempDir()
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		total += runWordcount(b, in, dir, 2, nil, time.Second)
	}
	b.ReportMetric(float64(words)*float64(b.N)/total.Seconds(), "words/s")
}

func median(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

// BenchmarkWordcountRecoveryOverhead: issue 3's figure. Runs with recovery
// on (-s 1s, 4 partitions, fresh partitions each time) and off alternate;
// reports both rates and on/off - 1 as overhead (target <= 10%).
func BenchmarkWordcountRecoveryOverhead(b *testing.B) {
	in, words := wordInput(b)
	dir := b.TempDir()
	var on, off []time.Duration
	rounds := max(b.N, 5)
	b.ResetTimer()
	for i := 0; i < rounds; i++ {
		off = append(off, runWordcount(b, in, dir, 2, nil, time.Second))
		rdir := filepath.Join(dir, "rec", time.Now().Format("150405.000000000"))
		os.MkdirAll(rdir, 0o755)
		if err := recovery.Init(context.Background(), rdir, 4); err != nil {
			b.Fatal(err)
		}
		st, err := recovery.Open(context.Background(), rdir, recovery.Options{FlowName: "wordcount", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: 5 * time.Second}})
		if err != nil {
			b.Fatal(err)
		}
		on = append(on, runWordcount(b, in, dir, 2, flowrun.NewRecovery(st), time.Second))
	}
	mOn, mOff := median(on), median(off)
	b.ReportMetric(float64(words)/mOff.Seconds(), "words/s-off")
	b.ReportMetric(float64(words)/mOn.Seconds(), "words/s-on")
	b.ReportMetric(100*(mOn.Seconds()/mOff.Seconds()-1), "overhead-%")
}

// BenchmarkResume1MKeys: issue 3's figure. A flow whose state holds 1M keys
// (wordcount over 1M distinct words) is resumed with nothing new to read;
// reports the wall time of that run: open, resume, load 1M keys, end (target < 3s).
func BenchmarkResume1MKeys(b *testing.B) {
	dir := b.TempDir()
	in := filepath.Join(dir, "distinct.txt")
	f, _ := os.Create(in)
	buf := make([]byte, 0, 16<<20)
	for i := 0; i < 1_000_000; i++ {
		buf = append(buf, "key"...)
		buf = appendLetters(buf, i)
		buf = append(buf, '\n')
	}
	f.Write(buf)
	f.Close()
	rdir := filepath.Join(dir, "rec")
	os.Mkdir(rdir, 0o755)
	if err := recovery.Init(context.Background(), rdir, 4); err != nil {
		b.Fatal(err)
	}
	open := func() core.Recovery {
		st, err := recovery.Open(context.Background(), rdir, recovery.Options{FlowName: "wordcount", Intervals: recovery.Intervals{Snapshot: time.Second}})
		if err != nil {
			b.Fatal(err)
		}
		return flowrun.NewRecovery(st)
	}
	out := filepath.Join(dir, "out.csv")
	if _, err := core.Run(context.Background(), flows.WordCount(flows.IO{Input: in, Output: out}), core.Config{Workers: 2, EpochInterval: time.Second, Recovery: open()}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, err := core.Run(context.Background(), flows.WordCount(flows.IO{Input: in, Output: out}), core.Config{Workers: 2, EpochInterval: time.Second, Recovery: open()})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		if res.StartEpoch < 2 {
			b.Fatalf("did not resume (start epoch %d)", res.StartEpoch)
		}
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "resume-s")
}

// appendLetters writes i in base 26 with letters, so every key is a word.
func appendLetters(buf []byte, i int) []byte {
	for {
		buf = append(buf, byte('a'+i%26))
		i /= 26
		if i == 0 {
			return buf
		}
	}
}
