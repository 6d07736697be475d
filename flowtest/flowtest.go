// Package flowtest is a kit for testing your own flows the way they will
// run: an in-memory source whose input can end or die at chosen items, a
// sink that collects what the flow wrote (exactly once, like the file
// sink), and a Runner that runs a flow on real recovery partitions in a
// temporary directory, again and again, as a process that is killed and
// restarted would.
//
//	src := flowtest.NewSource("a", "b").Abort().Add("c").EOF().Add("d")
//	out := flowtest.NewSink[string]()
//	r := flowtest.NewRunner(t)
//	r.RunToEnd(func() *core.Flow { return myFlow(src, out) }) // dies at Abort, resumes, ends at EOF
//	r.RunToEnd(func() *core.Flow { return myFlow(src, out) }) // a continuation: reads "d"
//	got := out.Items()
//
// Use the same Source and Sink values for every run of one test: they
// stand for the input and output that outlive the process.
package flowtest

import (
	"context"
	"errors"
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

// ErrAborted is the error of a run that reached an Abort marker.
var ErrAborted = errors.New("flowtest: the run was aborted at an Abort marker")

type marker uint8

const (
	value marker = iota
	eof          // input ends here (this run)
	abort        // the run dies here (once)
)

type item[T any] struct {
	kind marker
	v    T
}

// Source is an in-memory input of one partition ("flowtest") over a list
// of items and markers. Its position is the index of the next item, so a
// resumed run reads on from its last snapshot. It is safe to use from
// several runs in turn (not at once).
type Source[T any] struct {
	mu    sync.Mutex
	items []item[T]
	fired map[int]bool  // Abort markers that already fired
	batch int           // items per batch (0: up to the next marker)
	every time.Duration // between batches
}

// NewSource returns a source over items.
func NewSource[T any](items ...T) *Source[T] {
	return (&Source[T]{fired: map[int]bool{}}).Add(items...)
}

// Add appends items.
func (s *Source[T]) Add(items ...T) *Source[T] {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range items {
		s.items = append(s.items, item[T]{kind: value, v: v})
	}
	return s
}

// Pace spreads the input over time: batches of at most size items, one
// every interval, so a run crosses several epochs (and an Abort lands
// after some are durable).
func (s *Source[T]) Pace(size int, every time.Duration) *Source[T] {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batch, s.every = size, every
	return s
}

// EOF appends an end of input: a run that reaches it ends there (snapshots
// everything, finishes), and the next run continues after it, like a
// continuation over an appended file.
func (s *Source[T]) EOF() *Source[T] {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items = append(s.items, item[T]{kind: eof})
	return s
}

// Abort appends a point where the run dies, once: the run fails with
// ErrAborted as soon as the source reaches it, without a last snapshot, so
// what was not yet durable is lost as in a kill -9, and the next run
// resumes from the last durable epoch (before the marker) and reads on
// past it.
func (s *Source[T]) Abort() *Source[T] {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items = append(s.items, item[T]{kind: abort})
	return s
}

// Partitions implements core.Source.
func (s *Source[T]) Partitions(context.Context) ([]string, error) { return []string{"flowtest"}, nil }

// Open implements core.Source.
func (s *Source[T]) Open(_ context.Context, part string, resume []byte) (core.SourcePartition[T], error) {
	if part != "flowtest" {
		return nil, fmt.Errorf("flowtest: unknown partition %q", part)
	}
	p := &sourcePart[T]{s: s, ready: time.Now().Add(s.every)}
	if resume != nil {
		n, err := strconv.Atoi(string(resume))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("flowtest: stored position %q is not an item index", resume)
		}
		p.next = n
	}
	return p, nil
}

type sourcePart[T any] struct {
	s     *Source[T]
	next  int
	batch []T
	ready time.Time // when the next batch is due (with Pace)
}

// NextBatch returns the items up to the next marker (or Pace's batch).
func (p *sourcePart[T]) NextBatch(ctx context.Context, wait time.Duration) ([]T, error) {
	p.batch = p.batch[:0]
	if due, err := core.WaitUntil(ctx, p.ready, wait); err != nil || !due {
		return p.batch, err
	}
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	p.ready = time.Now().Add(p.s.every)
	for p.next < len(p.s.items) && (p.s.batch == 0 || len(p.batch) < p.s.batch) {
		it := p.s.items[p.next]
		switch it.kind {
		case value:
			p.batch = append(p.batch, it.v)
			p.next++
			continue
		case eof:
			if len(p.batch) > 0 {
				return p.batch, nil // the EOF on the next call, after these
			}
			p.next++
			return nil, io.EOF
		case abort:
			if p.s.fired[p.next] {
				p.next++
				continue
			}
			if len(p.batch) > 0 {
				return p.batch, nil
			}
			p.s.fired[p.next] = true
			return nil, ErrAborted
		}
	}
	if p.next < len(p.s.items) {
		return p.batch, nil // a full paced batch
	}
	return p.batch, io.EOF
}

func (p *sourcePart[T]) Position() []byte { return strconv.AppendInt(nil, int64(p.next), 10) }
func (p *sourcePart[T]) Close() error     { return nil }

// Sink collects what a flow writes, in one partition ("flowtest"). Like
// the file sink it is exactly-once with recovery: its position is the
// number of items committed, and a resumed run first drops what the run
// before it wrote after its last durable epoch.
type Sink[T any] struct {
	mu    sync.Mutex
	items []T
}

// NewSink returns an empty sink.
func NewSink[T any]() *Sink[T] { return &Sink[T]{} }

// Items returns a copy of the items written so far, in the order they
// arrived.
func (s *Sink[T]) Items() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.items)
}

// Partitions implements core.Sink.
func (s *Sink[T]) Partitions(context.Context) ([]string, error) { return []string{"flowtest"}, nil }

// PartitionFor implements core.Sink.
func (s *Sink[T]) PartitionFor(T) string { return "flowtest" }

// Open implements core.Sink.
func (s *Sink[T]) Open(ctx context.Context, _ string, resume []byte) (core.SinkPartition[T], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case resume != nil:
		n, err := strconv.Atoi(string(resume))
		if err != nil || n < 0 || n > len(s.items) {
			return nil, fmt.Errorf("flowtest: stored sink position %q does not fit the %d items collected", resume, len(s.items))
		}
		s.items = s.items[:n]
	case core.RunInfoFrom(ctx).StartEpoch <= 1:
		s.items = nil // a fresh flow, or one that never committed
	}
	return sinkPart[T]{s}, nil
}

type sinkPart[T any] struct{ s *Sink[T] }

// Write implements core.SinkPartition: the items are collected (and so
// visible to Items) at once.
func (p sinkPart[T]) Write(_ context.Context, items []T) error {
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	p.s.items = append(p.s.items, items...)
	return nil
}

// Commit implements core.SinkPartition: the position is the number of
// items collected.
func (p sinkPart[T]) Commit(context.Context, core.Epoch) ([]byte, error) {
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	return strconv.AppendInt(nil, int64(len(p.s.items)), 10), nil
}

// Close implements core.SinkPartition.
func (p sinkPart[T]) Close(context.Context) error { return nil }

// Runner runs flows on recovery partitions in a temporary directory that
// lives as long as the test.
type Runner struct {
	t testing.TB
	// Dir holds the recovery partitions.
	Dir string
	// Workers is each run's worker count (default 2); change it between
	// runs to test rescaling.
	Workers int
	// SnapshotInterval is the epoch length (default 20ms, so that a short
	// test crosses several epochs).
	SnapshotInterval time.Duration
	// Runs counts the runs started.
	Runs int
}

// NewRunner creates 4 recovery partitions in a temporary directory.
func NewRunner(t testing.TB) *Runner {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "recovery")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := recovery.Init(context.Background(), dir, 4); err != nil {
		t.Fatalf("flowtest: create recovery partitions: %v", err)
	}
	return &Runner{t: t, Dir: dir, Workers: 2, SnapshotInterval: 20 * time.Millisecond}
}

// Run runs f once on the runner's partitions: a fresh start, or a resume
// from the last durable epoch. It returns ErrAborted (wrapped) if the run
// died at an Abort marker.
func (r *Runner) Run(f *core.Flow) (*core.Result, error) {
	r.Runs++
	ctx := context.Background()
	st, err := recovery.Open(ctx, r.Dir, recovery.Options{FlowName: f.Name(), Intervals: recovery.Intervals{Snapshot: r.SnapshotInterval}})
	if err != nil {
		return nil, fmt.Errorf("flowtest: open recovery partitions: %w", err)
	}
	return core.Run(ctx, f, core.Config{Workers: r.Workers, EpochInterval: r.SnapshotInterval, Recovery: local.New(st)})
}

// RunToEnd runs build's flow, and again after every abort (each time as a
// new process would: a new flow from build, resumed from the partitions),
// until a run reaches the end of its input. Any other error fails the test.
// It returns the result of the run that ended.
func (r *Runner) RunToEnd(build func() *core.Flow) *core.Result {
	r.t.Helper()
	for {
		res, err := r.Run(build())
		if errors.Is(err, ErrAborted) {
			continue
		}
		if err != nil {
			r.t.Fatalf("flowtest: run %d: %v", r.Runs, err)
		}
		return res
	}
}
