package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

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

// latencySink records, per item, the time from its due time to its write.
type latencySink struct {
	mu  *sync.Mutex
	lat *[]time.Duration
}

func (s latencySink) Partitions() []string       { return []string{"lat"} }
func (s latencySink) PartitionFor(string) string { return "lat" }
func (s latencySink) Open(context.Context, string, []byte) (core.SinkPartition[string], error) {
	return s, nil
}
func (s latencySink) Commit(context.Context, core.Epoch) ([]byte, error) { return nil, nil }
func (s latencySink) Close(context.Context) error                        { return nil }
func (s latencySink) Write(_ context.Context, items []string) error {
	now := time.Now().UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range items {
		i := 0
		for i < len(it) && it[i] != ' ' {
			i++
		}
		due, err := strconv.ParseInt(it[:i], 10, 64)
		if err != nil {
			return err
		}
		*s.lat = append(*s.lat, time.Duration(now-due))
	}
	return nil
}

// latencyFlow builds the map-only or the keyed stateful flow over src.
func latencyFlow(keyed bool, src pacedSource, sink latencySink) *core.Flow {
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

// BenchmarkLatency: issue 14's figures. Source-to-sink latency (p50, p99,
// max) of a map-only flow and a keyed stateful flow with -s 10s, fed at 1k
// items a second (target: p99 <= 10ms, with and without recovery) and at
// full speed (where batches fill; reported, no target).
func BenchmarkLatency(b *testing.B) {
	for _, keyed := range []bool{false, true} {
		for _, rate := range []float64{1000, 0} {
			for _, withRec := range []bool{false, true} {
				name := fmt.Sprintf("flow=%s/rate=%s/recovery=%v", map[bool]string{false: "map", true: "keyed"}[keyed],
					map[bool]string{true: "1k-per-s", false: "full"}[rate > 0], withRec)
				b.Run(name, func(b *testing.B) {
					src := pacedSource{Parts: 2, Count: 1500, Rate: rate / 2}
					if rate == 0 {
						src.Count = 500_000
					}
					var lat []time.Duration
					sink := latencySink{mu: &sync.Mutex{}, lat: &lat}
					cfg := core.Config{Workers: 2, EpochInterval: 10 * time.Second}
					if withRec {
						dir := filepath.Join(b.TempDir(), "rec")
						os.Mkdir(dir, 0o755)
						if err := recovery.Init(context.Background(), dir, 4); err != nil {
							b.Fatal(err)
						}
						st, err := recovery.Open(context.Background(), dir, recovery.Options{FlowName: "latency", Intervals: recovery.Intervals{Snapshot: 10 * time.Second}})
						if err != nil {
							b.Fatal(err)
						}
						cfg.Recovery = local.New(st)
					}
					start := time.Now()
					if _, err := core.Run(context.Background(), latencyFlow(keyed, src, sink), cfg); err != nil {
						b.Fatal(err)
					}
					wall := time.Since(start)
					slices.Sort(lat)
					if want := int(2 * src.Count); len(lat) != want {
						b.Fatalf("%d items reached the sink, want %d", len(lat), want)
					}
					ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
					b.ReportMetric(ms(quantile(lat, 0.5)), "p50-ms")
					b.ReportMetric(ms(quantile(lat, 0.99)), "p99-ms")
					b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
					b.ReportMetric(float64(len(lat))/wall.Seconds(), "items/s")
				})
			}
		}
	}
}
