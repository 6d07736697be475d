package core

import (
	"context"
	"fmt"
	"sync"
)

// batchSize is how many items an exchange sender buffers per destination
// before handing the batch over.
const batchSize = 4096

// remoteBatchSize is the batch size towards other processes: every batch
// that crosses a process boundary costs a frame and wakeups on both sides,
// so they are bigger.
const remoteBatchSize = 16384

// inboxDepth bounds the batches queued for one receiving segment; a full
// inbox blocks its senders (backpressure, never unbounded buffers).
const inboxDepth = 16

type msgKind uint8

const (
	msgData    msgKind = iota
	msgAdvance         // the sender moved to epoch `epoch`: all its items of earlier epochs were sent
	msgEOF             // the sender is done; `epoch` is the final epoch
)

type msg struct {
	kind   msgKind
	from   int32
	origin int32 // 0: this process; p+1: arrived from process p (owed a credit)
	epoch  Epoch
	batch  any
}

// exchangedImpl is a step that receives its input through a keyed exchange.
type exchangedImpl interface {
	// sender builds the exchange op that the upstream segment `from` uses to
	// reach target's instances on every worker.
	sender(x *execution, target *node, from int) op
	// root builds target's instance on seg.worker, feeding out.
	root(seg *segment, out op) rootOp
	// wire encodes the exchange's items for other processes.
	wire() wireCodec
}

// rootOp is an exchanged step's per-worker instance. Its push takes the
// exchange's batches as *[]T (pointers pool without allocating).
type rootOp interface {
	op
	// restore loads snapshot rows routed to this worker (values valid only
	// during the call). It may be called concurrently before open.
	restore(rows []Loaded) error
	open(ctx context.Context) error
	close() error
}

// restoreLock guards restore calls, which arrive concurrently from the
// partition scans.
type restoreLock struct{ mu sync.Mutex }

type exchangeSender[T any] struct {
	ctx   context.Context
	x     *execution
	node  *node
	from  int32
	step  StepID
	dests []chan msg // nil for workers of other processes
	route func(T) int
	bufs  []*[]T     // per destination; a batch travels as *[]T
	pool  *sync.Pool // of *[]T: batches the receivers gave back
}

func newExchangeSender[T any](x *execution, target *node, from int, route func(T) int) op {
	return &exchangeSender[T]{
		ctx:   x.ctx,
		x:     x,
		node:  target,
		from:  int32(from),
		step:  target.id,
		dests: x.inboxes[target],
		route: route,
		bufs:  make([]*[]T, x.workers),
		pool:  x.pools[target],
	}
}

func (e *exchangeSender[T]) push(b any) error {
	for _, it := range b.([]T) {
		d := e.route(it)
		if d < 0 {
			return fmt.Errorf("exchange to %s: item has no destination partition", e.step)
		}
		b := e.bufs[d]
		if b == nil {
			if pb, ok := e.pool.Get().(*[]T); ok {
				b = pb
				*b = (*b)[:0]
			} else {
				nb := make([]T, 0, batchSize)
				b = &nb
			}
			e.bufs[d] = b
		}
		*b = append(*b, it)
		if n := len(*b); n == batchSize && e.dests[d] != nil || n == remoteBatchSize {
			if err := e.flushOne(d); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *exchangeSender[T]) flushOne(d int) error {
	b := e.bufs[d]
	e.bufs[d] = nil
	if ch := e.dests[d]; ch != nil {
		return send(e.ctx, ch, msg{kind: msgData, from: e.from, batch: b})
	}
	err := e.x.sendRemote(e.node, d, msg{kind: msgData, from: e.from}, *b)
	clear(*b)
	e.pool.Put(b) // encoded: the batch is free again
	return err
}

func (e *exchangeSender[T]) flush() error {
	for d, b := range e.bufs {
		if b != nil && len(*b) > 0 {
			if err := e.flushOne(d); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *exchangeSender[T]) broadcast(kind msgKind, ep Epoch) error {
	if err := e.flush(); err != nil {
		return err
	}
	for d, ch := range e.dests {
		m := msg{kind: kind, from: e.from, epoch: ep}
		var err error
		if ch != nil {
			err = send(e.ctx, ch, m)
		} else {
			err = e.x.sendRemote(e.node, d, m, nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (e *exchangeSender[T]) advance(_, to Epoch) error { return e.broadcast(msgAdvance, to) }
func (e *exchangeSender[T]) finish(final Epoch) error  { return e.broadcast(msgEOF, final) }
func (e *exchangeSender[T]) drain() error              { return e.flush() }

func send(ctx context.Context, ch chan msg, m msg) error {
	select {
	case ch <- m:
		return nil
	default:
	}
	select {
	case ch <- m:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// receiver orders what an exchanged step's instance sees: items of epoch e
// are applied only after every sender finished epoch e-1, so a snapshot of
// epoch e never contains effects of a later epoch. Items from a sender that
// is ahead wait in that sender's queue (bounded by the epoch skew).
type receiver struct {
	root    op
	pool    *sync.Pool // applied batches go back to the senders
	cur     Epoch
	senders []senderState
	eofs    int
	// onAdvance is called after the root closed epochs below `to`.
	onAdvance func(to Epoch) error
}

type senderState struct {
	epoch Epoch
	eof   bool
	queue []queued
}

type queued struct {
	epoch Epoch
	batch any
}

func newReceiver(root op, start Epoch, n int, onAdvance func(Epoch) error) *receiver {
	r := &receiver{root: root, cur: start, senders: make([]senderState, n), onAdvance: onAdvance}
	for i := range r.senders {
		r.senders[i].epoch = start
	}
	return r
}

// done reports whether every sender finished and everything was applied.
func (r *receiver) done() bool {
	if r.eofs < len(r.senders) {
		return false
	}
	for i := range r.senders {
		if len(r.senders[i].queue) > 0 {
			return false
		}
	}
	return true
}

func (r *receiver) handle(m msg) error {
	s := &r.senders[m.from]
	switch m.kind {
	case msgData:
		if s.epoch == r.cur && len(s.queue) == 0 {
			return r.apply(m.batch)
		}
		s.queue = append(s.queue, queued{s.epoch, m.batch})
		return nil
	case msgAdvance:
		s.epoch = m.epoch
	case msgEOF:
		s.epoch = m.epoch
		s.eof = true
		r.eofs++
	}
	return r.progress()
}

// apply pushes a batch (a *[]T) to the root, then recycles it: ops never
// keep a pushed batch.
func (r *receiver) apply(b any) error {
	err := r.root.push(b)
	if r.pool != nil {
		r.pool.Put(b)
	}
	return err
}

func (r *receiver) progress() error {
	for {
		next := r.senders[0].epoch
		for i := range r.senders {
			s := &r.senders[i]
			if s.epoch < next {
				next = s.epoch
			}
			if len(s.queue) > 0 && s.queue[0].epoch < next {
				next = s.queue[0].epoch
			}
		}
		moved := false
		if next > r.cur {
			if err := r.root.advance(r.cur, next); err != nil {
				return err
			}
			r.cur = next
			if err := r.onAdvance(next); err != nil {
				return err
			}
			moved = true
		}
		for i := range r.senders {
			s := &r.senders[i]
			for len(s.queue) > 0 && s.queue[0].epoch == r.cur {
				b := s.queue[0].batch
				s.queue[0].batch = nil
				s.queue = s.queue[1:]
				if err := r.apply(b); err != nil {
					return err
				}
				moved = true
			}
			if len(s.queue) == 0 {
				s.queue = nil
			}
		}
		if !moved {
			return nil
		}
	}
}
