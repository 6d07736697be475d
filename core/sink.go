package core

import (
	"bytes"
	"context"
	"fmt"
	"sort"
)

// Sink is a partitioned output. Partition p is written by worker
// KeyHash(p) mod W; every item goes to the partition PartitionFor names.
type Sink[T any] interface {
	// Partitions lists the partition names. The runtime asks once per run,
	// before anything runs, and uses that list throughout it; an error
	// (an unreachable system, after the sink's own retries) fails the run
	// before it starts, with the error. ctx is the run's context.
	Partitions(ctx context.Context) ([]string, error)
	// PartitionFor names the partition an item is written to.
	PartitionFor(item T) string
	// Open opens partition part. resume is the write position recorded at the
	// newest snapshot before the resume epoch, or nil on a fresh start; a
	// sink that can (files) discards anything written after it, which makes
	// its output exactly-once. ctx is the run's context (see SinkPartition)
	// and carries its RunInfo.
	Open(ctx context.Context, part string, resume []byte) (SinkPartition[T], error)
}

// SinkPartition writes one partition. The runtime calls it from one
// goroutine: Write any number of times (Flush between, for a Flusher),
// Commit when an epoch closes, and Close once at the end.
//
// Every method gets the run's context. It ends when the run stops early (a
// step failed, the user interrupted it, the caller cancelled): a method
// waiting on something outside the process (a broker, a network) then
// returns promptly with an error, leaving what it could not finish to the
// next run, which resumes from the last durable epoch (discarding or
// repeating, as the sink's guarantee says, what was written after it). Work
// that cannot be interrupted (a local file write) may ignore it.
type SinkPartition[T any] interface {
	// Write writes items. Output is to be visible at once, not held until
	// the epoch commits: a sink makes written items visible to readers of
	// the output when Write returns, or buffers them and makes them
	// visible at the next Flush (see Flusher). Items need not be durable
	// until Commit.
	Write(ctx context.Context, items []T) error
	// Commit closes epoch: the items written since the previous Commit
	// were written in it (epochs in between wrote nothing). It makes
	// everything written so far durable (a DurableSink: keeps it, to
	// publish once the epoch is durable) and returns the position of the
	// next write, the partition's snapshot as of epoch (nil if the sink has
	// no position). epoch increases from call to call.
	Commit(ctx context.Context, epoch Epoch) ([]byte, error)
	// Close ends the partition: after the last Commit at end of input, or
	// without it when the run stops early. If ctx has ended, Close
	// abandons work in flight rather than waiting for it, and still
	// releases everything it holds.
	Close(ctx context.Context) error
}

// Flusher is a SinkPartition that buffers writes. Flush makes everything
// written so far visible to readers of the output (not durable: a resume may
// still discard it). The runtime calls it whenever the sink's step has
// nothing more to process right now, and at least every Config.MaxDelay
// while input keeps coming, so written output shows within milliseconds and
// never waits for the epoch to close.
type Flusher interface {
	Flush(ctx context.Context) error
}

// DurableSink is a SinkPartition that publishes its output only once the
// epochs it was written in are durable in the recovery partitions, so that a
// crash and resume can neither lose nor repeat it (exactly-once into a
// system that cannot be rolled back, such as Kafka with transactions).
//
// Durable(ctx, below) says that every epoch below `below` is durable for
// every worker of the run: the partition publishes what it committed in
// those epochs, and only that. With recovery on, the runtime calls it
// before each Commit with below = the epoch being committed (so every epoch
// committed earlier is below it), and, after the final epoch's Commit,
// once more with below = final+1, before Close. below never decreases.
// Without recovery it is never called. A partition told of an epoch it
// cannot reconcile with what it committed or published fails rather than
// guessing.
type DurableSink interface {
	Durable(ctx context.Context, below Epoch) error
}

// Output adds a step that writes s to sink.
func Output[T any](s Stream[T], name string, sink Sink[T]) {
	n := s.n.flow.add(s.n, name, kindExchanged)
	n.exchanged = &sinkImpl[T]{sink: sink}
}

type sinkImpl[T any] struct{ sink Sink[T] }

// listPartitions asks the sink for its partitions (once per run, see
// execution.plan).
func (s *sinkImpl[T]) listPartitions(ctx context.Context) ([]string, error) {
	parts, err := s.sink.Partitions(ctx)
	if err == nil && len(parts) == 0 {
		err = fmt.Errorf("the sink has no partitions")
	}
	return parts, err
}

// partitions is the sink's partition list for this run: listed once, so
// that the routes to the workers and the partitions they open agree.
func (s *sinkImpl[T]) partitions(x *execution, n *node) []string { return x.sinkParts[n] }

func (s *sinkImpl[T]) sender(x *execution, target *node, from int) op {
	parts := s.partitions(x, target)
	owner := make(map[string]int, len(parts))
	for _, p := range parts {
		owner[p] = int(WorkerFor(p, x.workers))
	}
	route := func(it T) int {
		w, ok := owner[s.sink.PartitionFor(it)]
		if !ok {
			return -1
		}
		return w
	}
	if len(parts) == 1 {
		w := owner[parts[0]]
		route = func(T) int { return w }
	}
	return newExchangeSender[T](x, target, from, route)
}

func (s *sinkImpl[T]) wire() wireCodec { return wireFor[T]() }

func (s *sinkImpl[T]) root(seg *segment, out op) rootOp {
	return &sinkOp[T]{seg: seg, step: seg.node.id, sink: s.sink, all: s.partitions(seg.x, seg.node), resume: map[string][]byte{}}
}

type sinkOp[T any] struct {
	restoreLock
	seg    *segment
	step   StepID
	sink   Sink[T]
	all    []string // the sink's partitions in this run
	resume map[string][]byte
	names  []string // owned partitions, sorted
	parts  map[string]SinkPartition[T]
	single SinkPartition[T]
	bufs   map[string][]T
}

func (o *sinkOp[T]) restore(rows []Loaded) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, r := range rows {
		o.resume[string(r.Key)] = append([]byte{}, r.Value...)
	}
	return nil
}

func (o *sinkOp[T]) open(ctx context.Context) error {
	o.parts = map[string]SinkPartition[T]{}
	for _, p := range o.all {
		if WorkerFor(p, o.seg.x.workers) != o.seg.worker {
			continue
		}
		sp, err := o.sink.Open(ctx, p, o.resume[p])
		if err != nil {
			return fmt.Errorf("output %s: open partition %q: %w", o.step, p, err)
		}
		o.parts[p] = sp
		o.names = append(o.names, p)
	}
	sort.Strings(o.names)
	if len(o.parts) == 1 {
		o.single = o.parts[o.names[0]]
	}
	o.bufs = map[string][]T{}
	return nil
}

func (o *sinkOp[T]) push(b any) error {
	ctx := o.seg.x.ctx
	items := *b.(*[]T)
	if o.single != nil {
		if err := o.single.Write(ctx, items); err != nil {
			return fmt.Errorf("output %s: write partition %q: %w", o.step, o.names[0], err)
		}
		return nil
	}
	for _, it := range items {
		p := o.sink.PartitionFor(it)
		o.bufs[p] = append(o.bufs[p], it)
	}
	for p, buf := range o.bufs {
		sp, ok := o.parts[p]
		if !ok {
			return fmt.Errorf("output %s: item for partition %q, which this sink does not list", o.step, p)
		}
		if err := sp.Write(ctx, buf); err != nil {
			return fmt.Errorf("output %s: write partition %q: %w", o.step, p, err)
		}
		o.bufs[p] = buf[:0]
	}
	return nil
}

func (o *sinkOp[T]) advance(from, to Epoch) error {
	if err := o.durable(from); err != nil {
		return err
	}
	for _, p := range o.names {
		pos, err := o.parts[p].Commit(o.seg.x.ctx, from)
		if err != nil {
			return fmt.Errorf("output %s: commit partition %q: %w", o.step, p, err)
		}
		if pos != nil && !bytes.Equal(pos, o.resume[p]) {
			o.resume[p] = pos
			o.seg.record(o.step, p, from, pos)
		}
	}
	return nil
}

func (o *sinkOp[T]) finish(e Epoch) error { return o.advance(e, e+1) }

// durable tells the DurableSink partitions that every epoch below `below`
// is durable, once it is (with recovery on).
func (o *sinkOp[T]) durable(below Epoch) error {
	x := o.seg.x
	if x.rec == nil {
		return nil
	}
	waited := false
	for _, p := range o.names {
		d, ok := o.parts[p].(DurableSink)
		if !ok {
			continue
		}
		if !waited {
			if err := x.rec.WaitDurable(x.ctx, below); err != nil {
				return fmt.Errorf("output %s: %w", o.step, err)
			}
			waited = true
		}
		if err := d.Durable(x.ctx, below); err != nil {
			return fmt.Errorf("output %s: publish partition %q: %w", o.step, p, err)
		}
	}
	return nil
}

func (o *sinkOp[T]) drain() error {
	for _, p := range o.names {
		if f, ok := o.parts[p].(Flusher); ok {
			if err := f.Flush(o.seg.x.ctx); err != nil {
				return fmt.Errorf("output %s: flush partition %q: %w", o.step, p, err)
			}
		}
	}
	return nil
}

func (o *sinkOp[T]) close() error {
	var first error
	for _, p := range o.names {
		if err := o.parts[p].Close(o.seg.x.ctx); err != nil && first == nil {
			first = fmt.Errorf("output %s: close partition %q: %w", o.step, p, err)
		}
	}
	return first
}

// durablePublisher is a root op with DurableSink partitions.
type durablePublisher interface {
	durable(below Epoch) error
}

// publishDurable tells every DurableSink partition of this process that
// every epoch below `below` is durable, once it is.
func (x *execution) publishDurable(below Epoch) error {
	for _, es := range x.exSegs {
		if dp, ok := es.root.(durablePublisher); ok {
			if err := dp.durable(below); err != nil {
				return err
			}
		}
	}
	return nil
}
