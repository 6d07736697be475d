package core_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/connect/file"
	"github.com/flowkeep/flowkeep/connect/gen"
	"github.com/flowkeep/flowkeep/core"
)

// Items reach the sink as soon as the flow has nothing more to give, not
// when the epoch closes: with a 10s epoch, a slow input's items arrive
// within milliseconds, through a plain map and through a keyed exchange.
func TestRun_EpochsDoNotDelayItems(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		t.Run(map[bool]string{false: "map", true: "keyed"}[keyed], func(t *testing.T) {
			f := core.NewFlow("latency")
			in := core.Input(f, "in", gen.Generator[int64]{Parts: 2, Count: 15, Delay: 40 * time.Millisecond, Batch: 1,
				Make: func(int, int64) int64 { return time.Now().UnixNano() }})
			var out core.Stream[int64] = in
			if keyed {
				kv := core.KeyOn(in, "key", func(t int64) string { return strconv.FormatInt(t%7, 10) })
				counted := core.StatefulMap(kv, "count", func(n *int, t int64) (*int, int64) {
					if n == nil {
						n = new(int)
					}
					*n++
					return n, t
				})
				out = core.Map(counted, "value", func(kv core.KV[int64]) int64 { return kv.Value })
			}
			sink := &arrivalSink{}
			core.Output(out, "out", sink)
			start := time.Now()
			if _, err := core.Run(context.Background(), f, core.Config{Workers: 2, EpochInterval: 10 * time.Second}); err != nil {
				t.Fatal(err)
			}
			n, worst := sink.stats()
			if n != 30 {
				t.Fatalf("%d items arrived, want 30", n)
			}
			// The run takes about 600ms; without draining, the first items
			// would wait for the end of input.
			if worst > 250*time.Millisecond {
				t.Fatalf("an item took %v to arrive (run took %v); epochs must not hold items back", worst, time.Since(start))
			}
		})
	}
}

// The file sink's lines reach the file while the epoch is still open (a
// resume truncates what no epoch committed).
func TestFileSink_LinesReachTheFileBeforeTheEpochCloses(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.txt")
	f := core.NewFlow("t")
	in := core.Input(f, "in", gen.Generator[string]{Parts: 1, Count: 30, Delay: 20 * time.Millisecond, Batch: 1,
		Make: func(_ int, i int64) string { return strconv.FormatInt(i, 10) }})
	core.Output(in, "out", file.Sink{Path: out})
	seen := make(chan int64, 1)
	go func() {
		time.Sleep(350 * time.Millisecond)
		st, err := os.Stat(out)
		if err != nil {
			seen <- -1
			return
		}
		seen <- st.Size()
	}()
	if _, err := core.Run(context.Background(), f, core.Config{Workers: 1, EpochInterval: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if size := <-seen; size <= 0 {
		t.Fatalf("mid-run the output held %d bytes; lines must not wait for the epoch", size)
	}
}

// A later run pointed at another, non-empty file that this flow never
// wrote refuses it (as a fresh run does) instead of truncating it.
func TestFileSink_LaterRunRefusesAFileItNeverWrote(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("a\nb\n"), 0o644)
	rec := newMemRecovery()
	run := func(out string, overwrite bool) error {
		f := core.NewFlow("t")
		core.Output(core.Input(f, "in", file.Source{Path: in}), "out", file.Sink{Path: out, Overwrite: overwrite})
		_, err := core.Run(context.Background(), f, core.Config{Workers: 1, Recovery: rec})
		return err
	}
	if err := run(filepath.Join(dir, "first.txt"), false); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.txt")
	os.WriteFile(other, []byte("keep me\n"), 0o644)
	err := run(other, false)
	if err == nil || !strings.Contains(err.Error(), "never wrote it") {
		t.Fatalf("err = %v, want a refusal that says the flow never wrote it", err)
	}
	if b, _ := os.ReadFile(other); string(b) != "keep me\n" {
		t.Fatalf("the refused file now holds %q", b)
	}
	if err := run(other, true); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("with overwrite: %v", err)
	}
}

// arrivalSink records how many items arrived and the longest an item (a
// Unix nanosecond of its making) took to get there.
type arrivalSink struct {
	mu    sync.Mutex
	n     int
	worst time.Duration
}

func (s *arrivalSink) Partitions() []string      { return []string{"mem"} }
func (s *arrivalSink) PartitionFor(int64) string { return "mem" }
func (s *arrivalSink) Open(context.Context, string, []byte) (core.SinkPartition[int64], error) {
	return s, nil
}
func (s *arrivalSink) Commit(context.Context, core.Epoch) ([]byte, error) { return nil, nil }
func (s *arrivalSink) Close(context.Context) error                        { return nil }
func (s *arrivalSink) Write(_ context.Context, items []int64) error {
	now := time.Now().UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range items {
		s.n++
		s.worst = max(s.worst, time.Duration(now-t))
	}
	return nil
}

func (s *arrivalSink) stats() (int, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n, s.worst
}
