package mesh

import (
	"context"
	"fmt"
	"sync"
)

// topicQueueLen is how many messages of one topic may wait for its handler;
// a reader that finds the queue full waits (backpressure), it never drops.
// Small, because a message may be large (a commit, a batch of snapshot
// rows): what waits beyond it waits in the connection and the sender's
// queue, as it did when the reader ran the handler itself.
const topicQueueLen = 16

// topicQueue hands the messages of one topic to its handler, in arrival
// order, on a goroutine of the topic's own: a handler that blocks holds up
// its topic only, not the connection's reader (data, credit, other topics).
type topicQueue struct {
	topic string
	fn    func(from int, payload []byte) error // guarded by Mesh.mu (Handle may replace it)
	ch    chan topicItem
}

// topicItem is one message waiting for its topic's handler.
type topicItem struct {
	p       *peer
	seq     uint64 // its place among the topic messages from p (peer.nextSeq)
	payload []byte
	result  chan error // if set, told the handler's result (Detached's Receive waits on it)
}

// mark is a barrier or gather frame from a peer. It is recorded only once
// every topic message that peer sent before it has been handled (seq: how
// many it had sent), so that a barrier also means "every message sent
// before it was handled".
type mark struct {
	seq    uint64
	gather bool
	name   string
	data   []byte // a gather's payload
}

// inbox is a peer's share of the handler queues: which of its messages are
// still queued or being handled, and the marks that wait for them.
type inbox struct {
	mu      sync.Mutex
	nextSeq uint64
	pending map[*topicQueue][]uint64 // per topic, sequence numbers not yet handled, oldest first
	held    []mark                   // waiting for earlier messages, in arrival order
}

// settledBelow says whether every message of the peer numbered below seq
// has been handled (mu held). A topic's messages are handled in order, so
// the oldest pending one of each topic is the one to look at.
func (in *inbox) settledBelow(seq uint64) bool {
	for _, s := range in.pending {
		if len(s) > 0 && s[0] < seq {
			return false
		}
	}
	return true
}

// enter admits a handler call (or a topic's queue goroutine) unless the
// handlers were stopped; leave ends it. StopHandlers waits for every call
// admitted.
func (m *Mesh) enter() bool {
	m.life.Lock()
	defer m.life.Unlock()
	if m.haltedLocked() {
		return false
	}
	m.calls.Add(1)
	return true
}

// isHalted says whether the handlers were stopped: by haltHandlers, or by the
// end of the Dial context even where the AfterFunc that halts them has not
// run yet (it runs on a goroutine of its own), so that no handler call
// starts once that context has ended.
func (m *Mesh) isHalted() bool {
	m.life.Lock()
	defer m.life.Unlock()
	return m.haltedLocked()
}

func (m *Mesh) haltedLocked() bool {
	if !m.halted && m.ctx.Err() != nil {
		m.halted, m.haltErr = true, context.Cause(m.ctx)
		close(m.halt)
	}
	return m.halted
}

func (m *Mesh) leave() { m.calls.Done() }

// haltHandlers makes sure no handler call starts from now on; frames that
// arrive later are read and dropped (so the peers are not stalled), and a
// reader waiting for room in a full queue stops waiting.
func (m *Mesh) haltHandlers(why error) {
	m.life.Lock()
	defer m.life.Unlock()
	if !m.halted {
		m.halted, m.haltErr = true, why
		close(m.halt)
	}
}

// haltCause says why the handlers halted.
func (m *Mesh) haltCause() error {
	m.life.Lock()
	defer m.life.Unlock()
	return m.haltErr
}

// awaitHandlers waits, until ctx ends, for the handler calls in flight and
// the topics' queue goroutines to end (after haltHandlers).
func (m *Mesh) awaitHandlers(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		m.calls.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("handlers still running: %w", context.Cause(ctx))
	}
}

// runTopic is q's goroutine: it calls q's handler for each message in
// turn until the handlers stop.
func (m *Mesh) runTopic(q *topicQueue) {
	defer m.leave()
	for {
		select {
		case <-m.halt:
			return
		case it := <-q.ch:
			if m.isHalted() {
				if it.result != nil {
					it.result <- fmt.Errorf("%q from process %d not handled: %w", q.topic, it.p.id, ErrClosed)
				}
				return
			}
			m.handleItem(q, it)
		}
	}
}

// handleItem calls q's handler for it, unless its peer had a message
// refused before (nothing after that is acted on), then settles it.
func (m *Mesh) handleItem(q *topicQueue, it topicItem) {
	var err error
	if it.p.refused.Load() {
		err = fmt.Errorf("%q from process %d not handled: an earlier message from it was refused", q.topic, it.p.id)
	} else {
		m.mu.Lock()
		fn := q.fn
		m.mu.Unlock()
		if err = fn(it.p.id, it.payload); err != nil {
			it.p.refused.Store(true)
			m.rejected(it.p, err)
		}
	}
	m.settle(it.p, q, it.seq)
	if it.result != nil {
		it.result <- err
	}
}

// queue hands a topic message from p to q (waiting while q is full), or
// drops it once the handlers stopped. With await, the returned channel is
// told the handler's result.
func (m *Mesh) queue(p *peer, q *topicQueue, payload []byte, await bool) <-chan error {
	it := topicItem{p: p, payload: payload}
	if await {
		it.result = make(chan error, 1)
	}
	in := &p.in
	in.mu.Lock()
	it.seq = in.nextSeq
	in.nextSeq++
	if in.pending == nil {
		in.pending = map[*topicQueue][]uint64{}
	}
	in.pending[q] = append(in.pending[q], it.seq)
	in.mu.Unlock()
	select {
	case q.ch <- it:
	case <-m.halt:
		if it.result != nil {
			it.result <- fmt.Errorf("%q from process %d not handled: %w", q.topic, p.id, ErrClosed)
		}
	}
	return it.result
}

// settle notes that p's message seq of topic q was handled, and records the
// marks from p that no longer wait for anything.
func (m *Mesh) settle(p *peer, q *topicQueue, seq uint64) {
	in := &p.in
	in.mu.Lock()
	defer in.mu.Unlock()
	s := in.pending[q]
	if len(s) > 0 && s[0] == seq {
		in.pending[q] = s[1:]
	}
	for len(in.held) > 0 && in.settledBelow(in.held[0].seq) {
		m.record(p.id, in.held[0])
		in.held = in.held[1:]
	}
}

// arrive takes a barrier or gather frame from p: it is recorded at once if
// every topic message p sent before it has been handled, else once they
// have (settle).
func (m *Mesh) arrive(p *peer, mk mark) {
	in := &p.in
	in.mu.Lock()
	defer in.mu.Unlock()
	mk.seq = in.nextSeq
	if len(in.held) == 0 && in.settledBelow(mk.seq) {
		m.record(p.id, mk)
		return
	}
	in.held = append(in.held, mk)
}

// record makes a barrier or gather frame from process from count, and
// wakes the Barrier and Gather calls waiting.
func (m *Mesh) record(from int, mk mark) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mk.gather {
		if m.gathered[mk.name] == nil {
			m.gathered[mk.name] = map[int][]byte{}
		}
		m.gathered[mk.name][from] = mk.data
	} else {
		if m.barriers[mk.name] == nil {
			m.barriers[mk.name] = map[int]bool{}
		}
		m.barriers[mk.name][from] = true
	}
	close(m.barrierC)
	m.barrierC = make(chan struct{})
}
