package core

// op is one step instantiated inside a segment (one goroutine). Batches pushed
// to an op are read-only and valid only during the call: an op that keeps items
// copies them. advance says every epoch below `to` is complete and that items
// pushed since the previous boundary belonged to epoch `from`. finish runs
// end-of-input logic in the final epoch, closes it and propagates. drain
// says the upstream has nothing more to give right now: an op that holds a
// partial batch hands it on (and propagates), so epochs never add latency.
type op interface {
	push(batch any) error
	advance(from, to Epoch) error
	finish(final Epoch) error
	drain() error
}

type statelessImpl interface {
	build(seg *segment, out op) op
}

// nopOp terminates a chain with no consumer.
type nopOp struct{}

func (nopOp) push(any) error             { return nil }
func (nopOp) advance(Epoch, Epoch) error { return nil }
func (nopOp) finish(Epoch) error         { return nil }
func (nopOp) drain() error               { return nil }

// fanout feeds one batch to several consumers.
type fanout []op

func (f fanout) push(b any) error {
	for _, o := range f {
		if err := o.push(b); err != nil {
			return err
		}
	}
	return nil
}

func (f fanout) advance(from, to Epoch) error {
	for _, o := range f {
		if err := o.advance(from, to); err != nil {
			return err
		}
	}
	return nil
}

func (f fanout) drain() error {
	for _, o := range f {
		if err := o.drain(); err != nil {
			return err
		}
	}
	return nil
}

func (f fanout) finish(e Epoch) error {
	for _, o := range f {
		if err := o.finish(e); err != nil {
			return err
		}
	}
	return nil
}

// passOp forwards epoch boundaries to out; stateless ops embed it.
type passOp struct{ out op }

func (p passOp) advance(from, to Epoch) error { return p.out.advance(from, to) }
func (p passOp) finish(e Epoch) error         { return p.out.finish(e) }
func (p passOp) drain() error                 { return p.out.drain() }

// statelessFunc adapts a per-batch transformation into a statelessImpl.
type statelessFunc[A, B any] struct {
	each func(seg *segment, in []A, out []B) []B
}

func (s statelessFunc[A, B]) build(seg *segment, out op) op {
	return &mapOp[A, B]{passOp: passOp{out}, seg: seg, each: s.each}
}

type mapOp[A, B any] struct {
	passOp
	seg  *segment
	each func(seg *segment, in []A, out []B) []B
	buf  []B
}

func (m *mapOp[A, B]) push(b any) error {
	m.buf = m.each(m.seg, b.([]A), m.buf[:0])
	if len(m.buf) == 0 {
		return nil
	}
	return m.out.push(m.buf)
}

func stateless[A, B any](s Stream[A], name string, each func(seg *segment, in []A, out []B) []B) Stream[B] {
	n := s.n.flow.add(s.n, name, kindStateless)
	n.stateless = statelessFunc[A, B]{each: each}
	return Stream[B]{n}
}

// Map applies fn to every item.
func Map[A, B any](s Stream[A], name string, fn func(A) B) Stream[B] {
	return stateless(s, name, func(_ *segment, in []A, out []B) []B {
		for _, a := range in {
			out = append(out, fn(a))
		}
		return out
	})
}

// FilterMap applies fn to every item and keeps the results for which it
// returns true.
func FilterMap[A, B any](s Stream[A], name string, fn func(A) (B, bool)) Stream[B] {
	return stateless(s, name, func(_ *segment, in []A, out []B) []B {
		for _, a := range in {
			if b, ok := fn(a); ok {
				out = append(out, b)
			}
		}
		return out
	})
}

// Filter keeps the items for which keep returns true.
func Filter[A any](s Stream[A], name string, keep func(A) bool) Stream[A] {
	return FilterMap(s, name, func(a A) (A, bool) { return a, keep(a) })
}

// FlatMap calls fn for every item; fn emits zero or more outputs through emit.
// (A callback rather than a returned slice keeps the hot path allocation-free.)
func FlatMap[A, B any](s Stream[A], name string, fn func(a A, emit func(B))) Stream[B] {
	return stateless(s, name, func(_ *segment, in []A, out []B) []B {
		emit := func(b B) { out = append(out, b) }
		for _, a := range in {
			fn(a, emit)
		}
		return out
	})
}

// KeyOn turns items into keyed items; keyed operators route on the key.
func KeyOn[A any](s Stream[A], name string, key func(A) string) Stream[KV[A]] {
	return Map(s, name, func(a A) KV[A] { return KV[A]{Key: key(a), Value: a} })
}

// Inspect calls fn with the worker index for every item and passes items on
// unchanged.
func Inspect[A any](s Stream[A], name string, fn func(w WorkerIndex, a A)) Stream[A] {
	n := s.n.flow.add(s.n, name, kindStateless)
	n.stateless = inspectImpl[A](fn)
	return Stream[A]{n}
}

type inspectImpl[A any] func(WorkerIndex, A)

func (f inspectImpl[A]) build(seg *segment, out op) op {
	return &inspectOp[A]{passOp{out}, seg.worker, f}
}

type inspectOp[A any] struct {
	passOp
	w  WorkerIndex
	fn func(WorkerIndex, A)
}

func (o *inspectOp[A]) push(b any) error {
	for _, a := range b.([]A) {
		o.fn(o.w, a)
	}
	return o.out.push(b)
}
