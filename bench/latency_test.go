package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/connect/file"
	"github.com/flowkeep/flowkeep/connect/stdio"
	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/recovery/local"
)

// pacedSource emits Count items per partition at Rate items a second (0:
// as fast as it can); each item is the Unix nanosecond at which it became
// due, so the sink can tell how long it took to get there.
type pacedSource struct {
	Parts int
	Count int64
	Rate  float64
}

func (s pacedSource) Partitions(context.Context) ([]string, error) {
	out := make([]string, s.Parts)
	for i := range out {
		out[i] = "paced-" + strconv.Itoa(i)
	}
	return out, nil
}

func (s pacedSource) Open(_ context.Context, _ string, resume []byte) (core.SourcePartition[int64], error) {
	p := &pacedPart{s: s, start: time.Now()}
	if resume != nil {
		n, err := strconv.ParseInt(string(resume), 10, 64)
		if err != nil {
			return nil, err
		}
		p.next = n
	}
	return p, nil
}

type pacedPart struct {
	s     pacedSource
	start time.Time
	next  int64
	batch []int64
}

func (p *pacedPart) due(i int64) time.Time {
	return p.start.Add(time.Duration(float64(i) / p.s.Rate * float64(time.Second)))
}

func (p *pacedPart) NextBatch(ctx context.Context, wait time.Duration) ([]int64, error) {
	p.batch = p.batch[:0]
	if p.next >= p.s.Count {
		return nil, io.EOF
	}
	now := time.Now()
	if p.s.Rate <= 0 {
		for p.next < p.s.Count && len(p.batch) < 1024 {
			p.batch = append(p.batch, now.UnixNano())
			p.next++
		}
		return p.batch, nil
	}
	if d := p.due(p.next).Sub(now); d > 0 {
		t := time.NewTimer(min(d, wait))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		now = time.Now()
	}
	for p.next < p.s.Count && len(p.batch) < 1024 {
		due := p.due(p.next)
		if due.After(now) {
			break
		}
		p.batch = append(p.batch, due.UnixNano())
		p.next++
	}
	return p.batch, nil
}

func (p *pacedPart) Position() []byte { return strconv.AppendInt(nil, p.next, 10) }
func (p *pacedPart) Close() error     { return nil }

// visibleOutput is where the latency benchmark's flow writes: a real sink
// (the file sink, or the stdout sink on a pipe) and a reader that sees the
// output as a user would (tailing the file, or reading the pipe), and
// records, per line, the time from the item's due time (its first field)
// to the moment the reader saw it.
type visibleOutput struct {
	sink core.Sink[string]
	done chan struct{}
	stop func() // the run ended: read what is left, then return
	lat  []time.Duration
	err  error
}

// see records the lines in buf (complete ones; the rest is returned).
func (v *visibleOutput) see(buf []byte) []byte {
	now := time.Now().UnixNano()
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			return buf
		}
		line := buf[:i]
		buf = buf[i+1:]
		if j := bytes.IndexByte(line, ' '); j >= 0 {
			line = line[:j]
		}
		due, err := strconv.ParseInt(string(line), 10, 64)
		if err != nil && v.err == nil {
			v.err = fmt.Errorf("output line %q: %w", line, err)
		}
		v.lat = append(v.lat, time.Duration(now-due))
	}
}

// tailedFile is the file sink writing to a file in dir, read as it grows
// (every 200µs, the resolution of the figures).
func tailedFile(b *testing.B, dir string) *visibleOutput {
	path := filepath.Join(dir, "out.txt")
	v := &visibleOutput{sink: file.Sink{Path: path}, done: make(chan struct{})}
	stopped := make(chan struct{})
	v.stop = func() { close(stopped) }
	go func() {
		defer close(v.done)
		var f *os.File
		var part []byte
		buf := make([]byte, 1<<20)
		for {
			last := false
			select {
			case <-stopped:
				last = true
			default:
			}
			if f == nil {
				f, _ = os.Open(path)
			}
			for f != nil {
				n, err := f.Read(buf)
				part = v.see(append(part, buf[:n]...))
				if n == 0 || err != nil {
					break
				}
			}
			if last {
				if f != nil {
					f.Close()
				}
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return v
}

// piped is the stdout sink writing to a pipe, read as lines arrive.
func piped(b *testing.B) *visibleOutput {
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	v := &visibleOutput{sink: stdio.Stdout{W: w}, done: make(chan struct{}), stop: func() { w.Close() }}
	go func() {
		defer close(v.done)
		defer r.Close()
		var part []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			part = v.see(append(part, buf[:n]...))
			if err != nil {
				return
			}
		}
	}()
	return v
}

// latencyFlow builds the map-only or the keyed stateful flow over src.
func latencyFlow(keyed bool, src pacedSource, sink core.Sink[string]) *core.Flow {
	f := core.NewFlow("latency")
	in := core.Input(f, "in", src)
	if !keyed {
		out := core.Map(in, "format", func(t int64) string { return strconv.FormatInt(t, 10) })
		core.Output(out, "out", sink)
		return f
	}
	kv := core.KeyOn(in, "key", func(t int64) string { return strconv.FormatInt(t%1000, 10) })
	counts := core.StatefulMap(kv, "count", func(n *int64, t int64) (*int64, string) {
		if n == nil {
			n = new(int64)
		}
		*n++
		return n, strconv.FormatInt(t, 10) + " " + strconv.FormatInt(*n, 10)
	})
	core.Output(core.Map(counts, "value", func(kv core.KV[string]) string { return kv.Value }), "out", sink)
	return f
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// BenchmarkLatency: issue 14's figures, measured where a user sees the
// output (issue "output visible at once"): the time from an item being due
// at the source to its line being read by a reader tailing the output file
// (the file sink) or reading standard output (the stdout sink, on a pipe);
// p50, p99 and max. A map-only flow and a keyed stateful flow with -s 10s,
// fed at 1k items a second (target: p99 <= 10ms, with and without recovery)
// and at full speed (where batches fill; reported, no target).
func BenchmarkLatency(b *testing.B) {
	for _, keyed := range []bool{false, true} {
		for _, rate := range []float64{1000, 0} {
			for _, withRec := range []bool{false, true} {
				for _, toFile := range []bool{true, false} {
					name := fmt.Sprintf("flow=%s/rate=%s/recovery=%v/output=%s", map[bool]string{false: "map", true: "keyed"}[keyed],
						map[bool]string{true: "1k-per-s", false: "full"}[rate > 0], withRec, map[bool]string{true: "file", false: "stdout"}[toFile])
					b.Run(name, func(b *testing.B) { runLatency(b, keyed, rate, withRec, toFile) })
				}
			}
		}
	}
}

func runLatency(b *testing.B, keyed bool, rate float64, withRec, toFile bool) {
	src := pacedSource{Parts: 2, Count: 1500, Rate: rate / 2}
	if rate == 0 {
		src.Count = 500_000
	}
	dir := b.TempDir()
	var out *visibleOutput
	if toFile {
		out = tailedFile(b, dir)
	} else {
		out = piped(b)
	}
	cfg := core.Config{Workers: 2, EpochInterval: 10 * time.Second}
	if withRec {
		rec := filepath.Join(dir, "rec")
		os.Mkdir(rec, 0o755)
		if err := recovery.Init(context.Background(), rec, 4); err != nil {
			b.Fatal(err)
		}
		st, err := recovery.Open(context.Background(), rec, recovery.Options{FlowName: "latency", Intervals: recovery.Intervals{Snapshot: 10 * time.Second}})
		if err != nil {
			b.Fatal(err)
		}
		cfg.Recovery = local.New(st)
	}
	start := time.Now()
	_, err := core.Run(context.Background(), latencyFlow(keyed, src, out.sink), cfg)
	wall := time.Since(start)
	out.stop()
	<-out.done
	if err != nil {
		b.Fatal(err)
	}
	if out.err != nil {
		b.Fatal(out.err)
	}
	lat := out.lat
	slices.Sort(lat)
	if want := int(2 * src.Count); len(lat) != want {
		b.Fatalf("%d lines were seen in the output, want %d", len(lat), want)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(quantile(lat, 0.5)), "p50-ms")
	b.ReportMetric(ms(quantile(lat, 0.99)), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
	b.ReportMetric(float64(len(lat))/wall.Seconds(), "items/s")
}
