package core_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/connect/file"
	"github.com/flowkeep/flowkeep/connect/gen"
	"github.com/flowkeep/flowkeep/connect/stdio"
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

// Output is visible at once, where a user sees it: with a 10s epoch, every
// line of a slow input is read from standard output (the stdout sink on a
// pipe) and from the output file (the file sink, tailed) within
// milliseconds, with and without recovery; nothing waits for the epoch to
// close (a resume truncates the file's uncommitted lines).
func TestRun_OutputVisibleBeforeTheEpochCloses(t *testing.T) {
	for _, toFile := range []bool{false, true} {
		for _, withRec := range []bool{false, true} {
			t.Run(fmt.Sprintf("file=%v/recovery=%v", toFile, withRec), func(t *testing.T) {
				f := core.NewFlow("t")
				in := core.Input(f, "in", gen.Generator[string]{Parts: 2, Count: 15, Delay: 40 * time.Millisecond, Batch: 1,
					Make: func(int, int64) string { return strconv.FormatInt(time.Now().UnixNano(), 10) }})
				var sink core.Sink[string]
				var lines <-chan int64 // when each line was read
				if toFile {
					path := filepath.Join(t.TempDir(), "out.txt")
					sink, lines = file.Sink{Path: path}, tailLines(t, path)
				} else {
					r, w, err := os.Pipe()
					if err != nil {
						t.Fatal(err)
					}
					defer w.Close()
					sink, lines = stdio.Stdout{W: w}, readLines(r)
				}
				core.Output(in, "out", sink)
				cfg := core.Config{Workers: 2, EpochInterval: 10 * time.Second}
				if withRec {
					cfg.Recovery = newMemRecovery()
				}
				if _, err := core.Run(context.Background(), f, cfg); err != nil {
					t.Fatal(err)
				}
				var worst time.Duration
				for range 30 {
					select {
					case d := <-lines:
						worst = max(worst, time.Duration(d))
					case <-time.After(5 * time.Second):
						t.Fatal("fewer than 30 lines became visible")
					}
				}
				// The run takes about 600ms; a line held until the epoch
				// closes (here: end of input) would wait up to that long.
				if worst > 250*time.Millisecond {
					t.Fatalf("a line took %v to become visible; output must not wait for the epoch", worst)
				}
			})
		}
	}
}

// readLines sends, for each line read from r, how long ago (ns) the Unix
// nanosecond it holds was.
func readLines(r io.ReadCloser) <-chan int64 {
	out := make(chan int64, 1024)
	go func() {
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			made, _ := strconv.ParseInt(sc.Text(), 10, 64)
			out <- time.Now().UnixNano() - made
		}
	}()
	return out
}

// tailLines is readLines over the file at path, read as it grows, until
// the test ends.
func tailLines(t *testing.T, path string) <-chan int64 {
	r, w := io.Pipe()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		defer w.Close()
		var f *os.File
		buf := make([]byte, 64<<10)
		for {
			if f == nil {
				f, _ = os.Open(path)
			}
			for f != nil {
				n, _ := f.Read(buf)
				if n == 0 {
					break
				}
				w.Write(buf[:n])
			}
			select {
			case <-stop:
				if f != nil {
					f.Close()
				}
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return readLines(r)
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

func (s *arrivalSink) Partitions(context.Context) ([]string, error) { return []string{"mem"}, nil }
func (s *arrivalSink) PartitionFor(int64) string                    { return "mem" }
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
