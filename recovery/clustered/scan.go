package clustered

// Scans of every process's partitions at end of input (see state.go).

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/flowkeep/flowkeep/core"
)

// scanSession is a scan this process runs for a peer.
type scanSession struct {
	credit chan struct{} // a page may go (the peer asked for it)
	stop   chan struct{} // closed when the peer gave the scan up
	once   sync.Once
}

var errScanStopped = errors.New("scan given up by the process that asked")

// appendScanRow adds one row to a scan page.
func appendScanRow(b []byte, key core.StateKey, e core.Epoch, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	b = binary.AppendUvarint(b, uint64(e))
	return appendBytes(b, v)
}

// scanRequest is what a scan asks for.
type scanRequest struct {
	id    uint64
	step  core.StepID
	after core.Epoch
	every bool
	share core.KeyShare
}

func (q scanRequest) encode() []byte {
	b := binary.AppendUvarint(nil, q.id)
	b = appendBytes(b, []byte(q.step))
	b = binary.AppendUvarint(b, uint64(q.after))
	every := byte(0)
	if q.every {
		every = 1
	}
	b = append(b, every)
	b = binary.AppendUvarint(b, uint64(q.share.Worker))
	return binary.AppendUvarint(b, uint64(q.share.Workers))
}

func decodeScanRequest(b []byte) (scanRequest, error) {
	bad := fmt.Errorf("malformed scan request")
	var q scanRequest
	var k int
	if q.id, k = binary.Uvarint(b); k <= 0 {
		return q, bad
	}
	step, b, ok := cutBytes(b[k:])
	if !ok {
		return q, bad
	}
	q.step = core.StepID(step)
	after, k := binary.Uvarint(b)
	if k <= 0 || after >= 1<<62 || len(b) == k || b[k] > 1 {
		return q, bad
	}
	q.after, q.every = core.Epoch(after), b[k] == 1
	b = b[k+1:]
	w, k := binary.Uvarint(b)
	if k <= 0 {
		return q, bad
	}
	ws, k2 := binary.Uvarint(b[k:])
	if k2 <= 0 || len(b) != k+k2 || ws > 1<<24 || (ws > 0 && w >= ws) || (ws == 0 && w != 0) {
		return q, bad
	}
	q.share = core.KeyShare{Worker: core.WorkerIndex(w), Workers: int(ws)}
	return q, nil
}

// onScan starts a scan of this process's partitions for a peer; its pages
// go one at a time, each once the peer asked for it (the first at once).
func (o *OnDemand) onScan(from int, b []byte) error {
	rd := o.reads
	q, err := decodeScanRequest(b)
	if err != nil {
		return err
	}
	s := &scanSession{credit: make(chan struct{}, 2), stop: make(chan struct{})}
	s.credit <- struct{}{}
	key := servedKey{from, q.id}
	rd.mu.Lock()
	switch {
	case !rd.opened:
		rd.mu.Unlock()
		return fmt.Errorf("scan before this process opened its state")
	case rd.served[key] != nil:
		rd.mu.Unlock()
		return fmt.Errorf("scan %d asked for twice", q.id)
	}
	rd.served[key] = s
	rd.mu.Unlock()
	rd.serve(false, func(ctx context.Context) {
		defer func() {
			rd.mu.Lock()
			delete(rd.served, key)
			rd.mu.Unlock()
		}()
		send := func(flags byte, body []byte) error {
			select {
			case <-s.credit:
			case <-s.stop:
				return errScanStopped
			case <-ctx.Done():
				return ctx.Err()
			}
			return o.mesh.Send(ctx, from, "rec.reply", frame(q.id, flags, body))
		}
		o.scanPages(ctx, q, send)
	})
	return nil
}

// scanPages scans this process's partitions for q, handing send each page
// (flags 0) and then the last one (flagLast), or the error that ended the
// scan (flagLast|flagError: its text). A send that fails ends the scan
// there (the scan was given up, or ctx ended).
func (o *OnDemand) scanPages(ctx context.Context, q scanRequest, send func(flags byte, body []byte) error) {
	var page []byte
	var sendErr error
	err := o.store.ScanState(ctx, q.step, q.after, q.every, q.share.Has, func(rows []core.Loaded) error {
		for _, row := range rows {
			page = appendScanRow(page, row.Key, row.Epoch, row.Value)
			if len(page) >= replyFrame {
				if sendErr = send(0, page); sendErr != nil {
					return sendErr
				}
				page = nil
			}
		}
		return nil
	})
	switch {
	case sendErr != nil:
	case err != nil:
		send(flagLast|flagError, []byte(err.Error()))
	default:
		send(flagLast, page)
	}
}

// onScanMore lets a peer's scan send its next page.
func (o *OnDemand) onScanMore(from int, b []byte) error {
	s, err := o.session(from, b)
	if s == nil || err != nil {
		return err // a scan that already ended is no one's fault
	}
	select {
	case s.credit <- struct{}{}:
		return nil
	default:
		return fmt.Errorf("asked for more pages of a scan than it read")
	}
}

// onScanStop ends a peer's scan it gave up.
func (o *OnDemand) onScanStop(from int, b []byte) error {
	s, err := o.session(from, b)
	if s != nil {
		s.once.Do(func() { close(s.stop) })
	}
	return err
}

func (o *OnDemand) session(from int, b []byte) (*scanSession, error) {
	id, k := binary.Uvarint(b)
	if k <= 0 || k != len(b) {
		return nil, fmt.Errorf("malformed scan message")
	}
	o.reads.mu.Lock()
	defer o.reads.mu.Unlock()
	return o.reads.served[servedKey{from, id}], nil
}

// scanSource is one process's share of a scan, frame by frame, row by row.
type scanSource struct {
	from  int
	id    uint64                       // the request of a peer's share (0 for this process's)
	next  func() (byte, []byte, error) // the next frame
	body  []byte
	last  bool // the last frame was read
	key   []byte
	epoch core.Epoch
	val   []byte
}

// advance moves to the source's next row; false at its end.
func (s *scanSource) advance() (bool, error) {
	for len(s.body) == 0 {
		if s.last {
			return false, nil
		}
		flags, body, err := s.next()
		if err != nil {
			return false, err
		}
		s.body, s.last = body, flags&flagLast != 0
	}
	bad := fmt.Errorf("malformed scan page from process %d", s.from)
	key, rest, ok := cutBytes(s.body)
	if !ok {
		return false, bad
	}
	e, k := binary.Uvarint(rest)
	if k <= 0 || e >= 1<<62 {
		return false, bad
	}
	val, rest, ok := cutBytes(rest[k:])
	if !ok {
		return false, bad
	}
	if s.key != nil && bytes.Compare(s.key, key) >= 0 {
		return false, fmt.Errorf("scan page from process %d out of key order", s.from)
	}
	s.key, s.epoch, s.val, s.body = key, core.Epoch(e), val, rest
	return true, nil
}

type sourceHeap []*scanSource

func (h sourceHeap) Len() int           { return len(h) }
func (h sourceHeap) Less(i, j int) bool { return bytes.Compare(h[i].key, h[j].key) < 0 }
func (h sourceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *sourceHeap) Push(x any)        { *h = append(*h, x.(*scanSource)) }
func (h *sourceHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// scanBatch is how many rows ScanState hands fn at once.
const scanBatch = 1024

// ScanState implements core.StateReader: every owning process scans its
// partitions (this one locally), and the pages are merged in key order.
func (o *OnDemand) ScanState(ctx context.Context, step core.StepID, after core.Epoch, every bool, share core.KeyShare, fn func([]core.Loaded) error) error {
	r, rd := o.Recovery, o.reads
	self := r.mesh.Self()
	rd.mu.Lock()
	owning, selfOwns := rd.owning, rd.selfOwns
	rd.mu.Unlock()
	var remote []int
	for _, p := range owning {
		if p != self {
			remote = append(remote, p)
		}
	}
	if len(remote) == 0 {
		if !selfOwns {
			return nil
		}
		return r.store.ScanState(ctx, step, after, every, share.Has, fn)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var srcs []*scanSource
	defer func() {
		for _, s := range srcs {
			if s.from == self {
				continue
			}
			rd.retire(s.id)
			if !s.last && ctx.Err() == nil {
				r.mesh.Send(ctx, s.from, "rec.scan.stop", binary.AppendUvarint(nil, s.id))
			}
		}
	}()
	for _, p := range remote {
		id, c := rd.newCall(p)
		src := &scanSource{from: p, id: id}
		src.next = func() (byte, []byte, error) {
			flags, body, err := c.next(sctx, r)
			if err == nil && flags&flagLast == 0 {
				err = r.mesh.Send(sctx, p, "rec.scan.more", binary.AppendUvarint(nil, id))
			}
			return flags, body, err
		}
		srcs = append(srcs, src)
		q := scanRequest{id: id, step: step, after: after, every: every, share: share}
		if err := r.mesh.Send(ctx, p, "rec.scan", q.encode()); err != nil {
			return fmt.Errorf("ask process %d to scan %s: %w", p, step, err)
		}
	}
	if selfOwns {
		src, wait := o.localSource(sctx, scanRequest{step: step, after: after, every: every, share: share})
		defer wait()
		defer cancel() // before wait
		srcs = append(srcs, src)
	}
	h := make(sourceHeap, 0, len(srcs))
	for _, s := range srcs {
		ok, err := s.advance()
		if err != nil {
			return fmt.Errorf("scan %s: %w", step, err)
		}
		if ok {
			h = append(h, s)
		}
	}
	heap.Init(&h)
	batch := make([]core.Loaded, 0, scanBatch)
	var prev []byte
	for h.Len() > 0 {
		s := h[0]
		if prev != nil && bytes.Equal(prev, s.key) {
			return fmt.Errorf("scan %s: key %q came from two processes", step, s.key)
		}
		prev = s.key
		batch = append(batch, core.Loaded{Step: step, Key: core.StateKey(s.key), Epoch: s.epoch, Value: s.val})
		if len(batch) == scanBatch {
			if err := fn(batch); err != nil {
				return err
			}
			clear(batch)
			batch = batch[:0]
		}
		ok, err := s.advance()
		if err != nil {
			return fmt.Errorf("scan %s: %w", step, err)
		}
		if ok {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
		}
	}
	if len(batch) > 0 {
		return fn(batch)
	}
	return nil
}

// localSource scans this process's partitions on a goroutine of its own,
// page by page, one page ahead, as a peer would; it stops when ctx ends,
// and wait waits for it to.
func (o *OnDemand) localSource(ctx context.Context, q scanRequest) (src *scanSource, wait func()) {
	type pageMsg struct {
		flags byte
		body  []byte
	}
	pages := make(chan pageMsg, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		o.scanPages(ctx, q, func(flags byte, body []byte) error {
			select {
			case pages <- pageMsg{flags, body}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	self := o.mesh.Self()
	return &scanSource{from: self, next: func() (byte, []byte, error) {
		select {
		case m := <-pages:
			if m.flags&flagError != 0 {
				return 0, nil, fmt.Errorf("process %d: %s", self, m.body)
			}
			return m.flags, m.body, nil
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}}, func() { <-done }
}
