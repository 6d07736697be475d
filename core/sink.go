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
	Partitions() []string
	// PartitionFor names the partition an item is written to.
	PartitionFor(item T) string
	// Open opens partition part. resume is the write position recorded at the
	// newest snapshot before the resume epoch, or nil on a fresh start; a
	// sink that can (files) discards anything written after it, which makes
	// its output exactly-once.
	Open(ctx context.Context, part string, resume []byte) (SinkPartition[T], error)
}

// SinkPartition writes one partition.
type SinkPartition[T any] interface {
	// Write writes items; they need not be durable until Commit.
	Write(items []T) error
	// Commit makes everything written so far durable and returns the
	// position of the next write (nil if the sink has no position). It is
	// called when an epoch closes.
	Commit() ([]byte, error)
	Close() error
}

// Flusher is a SinkPartition that buffers writes and can make them visible
// (not durable) at once. The runtime calls Flush when the flow has nothing
// more to give right now, so output does not wait for the epoch to close.
type Flusher interface {
	Flush() error
}

// DurableSink is a SinkPartition that publishes its output only once the
// epochs it was written in are durable in the recovery partitions, so that a
// crash and resume can neither lose nor repeat it (exactly-once into a
// system that cannot be rolled back, such as Kafka with transactions).
// With recovery on, the runtime calls Durable(below) when every epoch below
// `below` is durable for every worker of the run: before each Commit (below
// is the epoch being committed) and, after the final epoch, once with every
// epoch durable, before Close. Without recovery it is never called.
type DurableSink interface {
	Durable(below Epoch) error
}

// Output adds a step that writes s to sink.
func Output[T any](s Stream[T], name string, sink Sink[T]) {
	n := s.n.flow.add(s.n, name, kindExchanged)
	n.exchanged = &sinkImpl[T]{sink: sink}
}

type sinkImpl[T any] struct{ sink Sink[T] }

func (s *sinkImpl[T]) sender(x *execution, target *node, from int) op {
	parts := s.sink.Partitions()
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
	return &sinkOp[T]{seg: seg, step: seg.node.id, sink: s.sink, resume: map[string][]byte{}}
}

type sinkOp[T any] struct {
	restoreLock
	seg    *segment
	step   StepID
	sink   Sink[T]
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
	for _, p := range o.sink.Partitions() {
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
	items := *b.(*[]T)
	if o.single != nil {
		return o.single.Write(items)
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
		if err := sp.Write(buf); err != nil {
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
		pos, err := o.parts[p].Commit()
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
		if err := d.Durable(below); err != nil {
			return fmt.Errorf("output %s: publish partition %q: %w", o.step, p, err)
		}
	}
	return nil
}

func (o *sinkOp[T]) drain() error {
	for _, p := range o.names {
		if f, ok := o.parts[p].(Flusher); ok {
			if err := f.Flush(); err != nil {
				return fmt.Errorf("output %s: flush partition %q: %w", o.step, p, err)
			}
		}
	}
	return nil
}

func (o *sinkOp[T]) close() error {
	var first error
	for _, p := range o.names {
		if err := o.parts[p].Close(); err != nil && first == nil {
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
