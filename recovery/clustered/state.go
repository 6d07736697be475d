package clustered

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/model"
	"github.com/flowkeep/flowkeep/recovery"
)

// State on demand in a cluster (core.StateReader): keyed state larger than
// a process's memory, read from the partitions when the run needs it.
//
// A key's partition may be owned by another process: keys go to workers
// by one hash (WorkerFor) and to partitions by another (PartitionFor), and
// the partition count is fixed while the worker count changes on every
// rescale, so no placement keeps a worker's keys on its own process.
// Lookups are routed instead, in batches:
//   - ReadState splits a batch of keys by the process owning each key's
//     partition, sends each remote share as one request ("rec.read"),
//     reads the local share meanwhile, and waits for the replies. The
//     owner reads its share as a local lookup would (Store.ReadState) on a
//     goroutine of its own (at most servedReads at once), and replies in
//     frames of at most replyFrame bytes.
//   - ScanState (end of input) merges, in key order, the scan of this
//     process's partitions with a scan on every other owning process. A
//     remote scan streams pages of at most replyFrame bytes, one page
//     ahead: the owner sends a page only once the scanning process asked
//     for it ("rec.scan.more"), so a slow consumer holds the owner's
//     scan, never the connection.
//   - Written(w) is the least, over the processes owning partitions, of
//     how many of worker w's commits each has made readable: an owner
//     announces its counts ("rec.written") after its writers apply
//     commits. Every commit of a worker reaches every owning process (the
//     frontier goes to each), so the counts agree commit by commit, and a
//     key a worker dropped from memory once Written counted its last
//     write is read back from its owner as written.
//
// Replies are never waited for in a mesh handler: a handler only hands a
// frame to the call waiting for it (or starts the work a request asks
// for), so the connection's reader never waits on a worker.

// OnDemand is a cluster recovery that also reads keyed state on demand
// (core.StateReader): with core.Config.StateMemory, the keys in a
// process's memory are a cache over the partitions of the whole cluster.
// Without it a run loads every key at resume, as Recovery does.
type OnDemand struct {
	*Recovery
}

var (
	_ core.ClusterRecovery = (*OnDemand)(nil)
	_ core.StateReader     = (*OnDemand)(nil)
)

// OnDemand returns r reading state on demand; use it in r's place.
func (r *Recovery) OnDemand() *OnDemand {
	r.reads = &reads{calls: map[uint64]*call{}, served: map[servedKey]*scanSession{}, sem: make(chan struct{}, servedReads), writtenC: make(chan struct{})}
	return &OnDemand{r}
}

const (
	// servedReads bounds the peers' lookups this process serves at once.
	servedReads = 4
	// replyFrame is the size past which a reply or a scan page is cut.
	replyFrame = 256 << 10
	// maxKeysPerRead bounds the keys one lookup request may name.
	maxKeysPerRead = 1 << 20
)

// reads is the clustered recovery's share of state on demand.
type reads struct {
	mu      sync.Mutex
	nextID  uint64
	calls   map[uint64]*call // requests of this process still answered
	served  map[servedKey]*scanSession
	opened  bool
	full    bool       // commits are read back (OpenState's full): Written counts
	owning  []int      // the processes owning partitions
	written [][]uint64 // per process, per worker: commits readable there, as announced
	// writtenC is closed and replaced when a count in written rises or a
	// local commit became readable.
	writtenC chan struct{}
	// toAnnounce says this process's writers applied commits since the
	// last announcement.
	toAnnounce atomic.Bool
	sem        chan struct{}
	// closing refuses new served work once Shutdown began; serving counts
	// the work in flight (Add only under mu with closing unset).
	closing bool
	serving sync.WaitGroup
	// serveCtx ends when Shutdown begins: served work stops.
	serveCtx    context.Context
	serveCancel context.CancelFunc
}

type servedKey struct {
	from int
	id   uint64
}

// Attach implements core.ClusterRecovery.
func (o *OnDemand) Attach(m core.Mesh) {
	o.Recovery.Attach(m)
	m.Handle("rec.written", o.onWritten)
	m.Handle("rec.read", o.onRead)
	m.Handle("rec.reply", o.onReply)
	m.Handle("rec.scan", o.onScan)
	m.Handle("rec.scan.more", o.onScanMore)
	m.Handle("rec.scan.stop", o.onScanStop)
}

// OpenState implements core.StateReader: this process opens the state of
// its own partitions, and the processes agree on which steps have state
// anywhere (a worker's keys may live in any process's partitions).
func (o *OnDemand) OpenState(ctx context.Context, below core.Epoch, lazy func(core.StepID) bool, full bool, fn func([]core.Loaded) error) (map[core.StepID]bool, error) {
	r, rd := o.Recovery, o.reads
	if r.store == nil {
		return nil, fmt.Errorf("open state before Begin")
	}
	var owning []int
	for p := range r.mesh.Processes() {
		if r.ownsAny(p) {
			owning = append(owning, p)
		}
	}
	rd.mu.Lock()
	rd.owning = owning
	rd.written = make([][]uint64, r.mesh.Processes())
	for p := range rd.written {
		rd.written[p] = make([]uint64, r.store.Workers())
	}
	rd.serveCtx, rd.serveCancel = context.WithCancel(r.runCtx)
	rd.opened, rd.full = true, full
	rd.mu.Unlock()
	info, err := r.store.OpenState(ctx, below, lazy, full, fn)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", r.mesh.Self(), err)
	}
	msg := stateMsg{Full: full}
	for id := range info.Steps {
		msg.Steps = append(msg.Steps, id)
	}
	slices.Sort(msg.Steps)
	payload, _ := json.Marshal(msg)
	all, err := r.mesh.Gather(ctx, "rec.state", payload)
	if err != nil {
		return nil, err
	}
	msgs := make([]stateMsg, r.mesh.Processes())
	for p, b := range all {
		if p < 0 || p >= len(msgs) {
			return nil, fmt.Errorf("steps with state from process %d of %d", p, len(msgs))
		}
		if err := json.Unmarshal(b, &msgs[p]); err != nil {
			return nil, fmt.Errorf("steps with state from process %d: %w", p, err)
		}
	}
	has := map[core.StepID]bool{}
	for p, m := range msgs {
		if m.Full != msgs[0].Full {
			with := map[bool]string{true: "with", false: "without"}
			return nil, fmt.Errorf("process 0 runs %s a bound on state memory (--state-memory) and process %d %s: give every process one, or none", with[msgs[0].Full], p, with[m.Full])
		}
		for _, id := range m.Steps {
			has[id] = true
		}
	}
	return has, nil
}

// stateMsg is what each process says once it opened its state: the lazy
// steps its partitions hold state of, and whether it reads every commit
// back (a bound on state memory: every process must, or none, since a key
// may be evicted by one process and read from another's partition).
type stateMsg struct {
	Steps []core.StepID `json:"steps"`
	Full  bool          `json:"full,omitempty"`
}

// StateBytes implements core.StateReader: what this process's partitions
// hold in memory to serve lookups.
func (o *OnDemand) StateBytes() int64 { return o.store.StateBytes() }

// Written implements core.StateReader: how many of worker w's commits
// every owning process has made readable.
func (o *OnDemand) Written(w core.WorkerIndex) uint64 {
	r, rd := o.Recovery, o.reads
	self := r.mesh.Self()
	n := uint64(1<<64 - 1)
	rd.mu.Lock()
	for _, p := range rd.owning {
		if p != self && int(w) < len(rd.written[p]) {
			n = min(n, rd.written[p][w])
		}
	}
	owning := len(rd.owning)
	rd.mu.Unlock()
	if r.ownsAny(self) {
		n = min(n, r.store.Written(w))
	}
	if owning == 0 || n == 1<<64-1 {
		return 0
	}
	return n
}

// WaitWritten implements core.StateReader.
func (o *OnDemand) WaitWritten(ctx context.Context, w core.WorkerIndex, n uint64) error {
	r, rd := o.Recovery, o.reads
	for {
		r.mu.Lock()
		err, risen := r.failure, r.risen
		r.mu.Unlock()
		stored := r.store.Changed() // closed when the store fails, too
		if err == nil {
			err = r.store.Err()
		}
		if err != nil {
			return err
		}
		rd.mu.Lock()
		ch := rd.writtenC
		rd.mu.Unlock()
		if o.Written(w) >= n {
			return nil
		}
		select {
		case <-ch:
		case <-risen:
		case <-stored:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// wakeWritten wakes WaitWritten callers (rd.mu held).
func (rd *reads) wakeWrittenLocked() {
	close(rd.writtenC)
	rd.writtenC = make(chan struct{})
}

// applied is the store's OnApplied: local commits became readable; the
// peers hear of it from the announcer.
func (r *Recovery) applied() {
	rd := r.reads
	rd.mu.Lock()
	full := rd.opened && rd.full
	rd.wakeWrittenLocked()
	rd.mu.Unlock()
	if !full {
		return // no key leaves memory: no one waits for the counts
	}
	rd.toAnnounce.Store(true)
	select {
	case r.pminC <- struct{}{}:
	default:
	}
}

// writtenCounts is what this process announces: per worker, how many of
// its commits this process's partitions made readable.
func (r *Recovery) writtenCounts() []byte {
	var b []byte
	for w := range r.store.Workers() {
		b = binary.AppendUvarint(b, r.store.Written(recovery.WorkerIndex(w)))
	}
	return b
}

// onWritten records a peer's readable commit counts.
func (o *OnDemand) onWritten(from int, b []byte) error {
	rd := o.reads
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if !rd.opened || !rd.full {
		return fmt.Errorf("readable commit counts, which this process does not use")
	}
	counts := rd.written[from]
	for w := range counts {
		n, k := binary.Uvarint(b)
		if k <= 0 {
			return fmt.Errorf("malformed readable commit counts")
		}
		counts[w] = max(counts[w], n)
		b = b[k:]
	}
	if len(b) > 0 {
		return fmt.Errorf("readable commit counts of more than %d workers", len(counts))
	}
	rd.wakeWrittenLocked()
	return nil
}

// call is a request of this process waiting for the frames of its reply.
type call struct {
	from   int // the process that answers
	mu     sync.Mutex
	frames [][]byte
	wake   chan struct{} // a frame arrived (capacity 1)
}

// Reply frame flags.
const (
	flagLast  = 1 // the reply's (or the scan's) last frame
	flagError = 2 // the frame is an error message (and the last)
)

// newCall registers a call answered by process from.
func (rd *reads) newCall(from int) (uint64, *call) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	rd.nextID++
	c := &call{from: from, wake: make(chan struct{}, 1)}
	rd.calls[rd.nextID] = c
	return rd.nextID, c
}

func (rd *reads) retire(id uint64) {
	rd.mu.Lock()
	delete(rd.calls, id)
	rd.mu.Unlock()
}

// next waits for the call's next frame: its flags and payload. It gives
// up when the clustered recovery failed or ctx ended (a peer that is gone
// fails the run, and so its context).
func (c *call) next(ctx context.Context, r *Recovery) (byte, []byte, error) {
	for {
		c.mu.Lock()
		if len(c.frames) > 0 {
			f := c.frames[0]
			c.frames[0] = nil
			c.frames = c.frames[1:]
			c.mu.Unlock()
			if f[0]&flagError != 0 {
				return 0, nil, fmt.Errorf("process %d: %s", c.from, f[1:])
			}
			return f[0], f[1:], nil
		}
		c.mu.Unlock()
		r.mu.Lock()
		err, risen := r.failure, r.risen
		r.mu.Unlock()
		if err != nil {
			return 0, nil, err
		}
		select {
		case <-c.wake:
		case <-risen: // a failure, or a frontier rose: look again
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
}

// onReply hands a reply frame (a lookup's or a scan page) to its call.
func (o *OnDemand) onReply(from int, b []byte) error {
	rd := o.reads
	id, k := binary.Uvarint(b)
	if k <= 0 || len(b) == k {
		return fmt.Errorf("malformed reply")
	}
	frame := b[k:]
	if frame[0]&^(flagLast|flagError) != 0 {
		return fmt.Errorf("reply with unknown flags %#x", frame[0])
	}
	rd.mu.Lock()
	c := rd.calls[id]
	issued := id <= rd.nextID
	rd.mu.Unlock()
	switch {
	case c == nil && issued:
		return nil // a call this process gave up (its run is ending, or a scan stopped early)
	case c == nil:
		return fmt.Errorf("reply to request %d, which this process never sent", id)
	case c.from != from:
		return fmt.Errorf("reply to request %d, which was sent to process %d", id, c.from)
	}
	c.mu.Lock()
	c.frames = append(c.frames, frame)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// ReadState implements core.StateReader: keys are read from the process
// owning their partition, each remote share in one request, all at once.
func (o *OnDemand) ReadState(ctx context.Context, step core.StepID, keys []core.StateKey, fn func(int, core.Epoch, []byte) error) error {
	r, rd := o.Recovery, o.reads
	self := r.mesh.Self()
	byProc := map[int][]int32{}
	h := model.StepHash(step)
	for i, k := range keys {
		p := r.owners[model.PartitionAfter(h, k, r.count)]
		byProc[p] = append(byProc[p], int32(i))
	}
	type sent struct {
		id  uint64
		c   *call
		idx []int32
	}
	var out []sent
	defer func() {
		for _, s := range out {
			rd.retire(s.id)
		}
	}()
	for p, idx := range byProc {
		if p == self {
			continue
		}
		id, c := rd.newCall(p)
		out = append(out, sent{id, c, idx})
		b := binary.AppendUvarint(nil, id)
		b = appendBytes(b, []byte(step))
		b = binary.AppendUvarint(b, uint64(len(idx)))
		for _, i := range idx {
			b = appendBytes(b, []byte(keys[i]))
		}
		if err := r.mesh.Send(ctx, p, "rec.read", b); err != nil {
			return fmt.Errorf("ask process %d for %d keys of %s: %w", p, len(idx), step, err)
		}
	}
	if idx := byProc[self]; len(idx) > 0 {
		sub := make([]core.StateKey, len(idx))
		for j, i := range idx {
			sub[j] = keys[i]
		}
		if err := r.store.ReadState(ctx, step, sub, func(j int, e core.Epoch, v []byte) error { return fn(int(idx[j]), e, v) }); err != nil {
			return err
		}
	}
	for _, s := range out {
		for {
			flags, b, err := s.c.next(ctx, r)
			if err != nil {
				return fmt.Errorf("read %d keys of %s from process %d: %w", len(s.idx), step, s.c.from, err)
			}
			if err := decodeReadRows(b, len(s.idx), func(j int, e core.Epoch, v []byte) error { return fn(int(s.idx[j]), e, v) }); err != nil {
				return fmt.Errorf("read %d keys of %s from process %d: %w", len(s.idx), step, s.c.from, err)
			}
			if flags&flagLast != 0 {
				break
			}
		}
	}
	return nil
}

// appendReadRow adds one key a lookup found to a reply: its index among
// the request's keys, its epoch and its value.
func appendReadRow(b []byte, j int, e core.Epoch, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(j))
	b = binary.AppendUvarint(b, uint64(e))
	return appendBytes(b, v)
}

// decodeReadRows hands fn each row of a lookup reply frame of a request
// of n keys.
func decodeReadRows(b []byte, n int, fn func(int, core.Epoch, []byte) error) error {
	for len(b) > 0 {
		j, k := binary.Uvarint(b)
		if k <= 0 || j >= uint64(n) {
			return fmt.Errorf("malformed lookup reply")
		}
		b = b[k:]
		e, k := binary.Uvarint(b)
		if k <= 0 || e >= 1<<62 {
			return fmt.Errorf("malformed lookup reply")
		}
		b = b[k:]
		v, rest, ok := cutBytes(b)
		if !ok {
			return fmt.Errorf("malformed lookup reply")
		}
		b = rest
		if err := fn(int(j), core.Epoch(e), v); err != nil {
			return err
		}
	}
	return nil
}

// cutBytes reads a length-prefixed byte string from b.
func cutBytes(b []byte) (v, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, false
	}
	return b[k : k+int(n) : k+int(n)], b[k+int(n):], true
}

// frame is a reply frame: the request's id, flags, body.
func frame(id uint64, flags byte, body []byte) []byte {
	b := binary.AppendUvarint(make([]byte, 0, len(body)+binary.MaxVarintLen64+1), id)
	b = append(b, flags)
	return append(b, body...)
}

// serve runs fn on a goroutine of its own unless Shutdown began; with
// bounded, it first waits for one of the servedReads slots.
func (rd *reads) serve(bounded bool, fn func(ctx context.Context)) {
	if bounded {
		rd.sem <- struct{}{}
	}
	rd.mu.Lock()
	if rd.closing {
		rd.mu.Unlock()
		if bounded {
			<-rd.sem
		}
		return
	}
	rd.serving.Add(1)
	ctx := rd.serveCtx
	rd.mu.Unlock()
	go func() {
		defer rd.serving.Done()
		if bounded {
			defer func() { <-rd.sem }()
		}
		fn(ctx)
	}()
}

// stopServing makes served work stop and waits for it (or ctx).
func (rd *reads) stopServing(ctx context.Context) error {
	rd.mu.Lock()
	rd.closing = true
	if rd.serveCancel != nil {
		rd.serveCancel()
	}
	rd.mu.Unlock()
	stopped := make(chan struct{})
	go func() { rd.serving.Wait(); close(stopped) }()
	select {
	case <-stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: lookups served to peers still run: %w", recovery.ErrShutdownTimeout, context.Cause(ctx))
	}
}

// readRequest decodes a peer's lookup request.
func (o *OnDemand) readRequest(b []byte) (uint64, core.StepID, []core.StateKey, error) {
	bad := fmt.Errorf("malformed lookup request")
	id, k := binary.Uvarint(b)
	if k <= 0 {
		return 0, "", nil, bad
	}
	step, b, ok := cutBytes(b[k:])
	if !ok {
		return 0, "", nil, bad
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxKeysPerRead || n > uint64(len(b)-k) {
		return 0, "", nil, bad
	}
	b = b[k:]
	keys := make([]core.StateKey, n)
	h := model.StepHash(core.StepID(step))
	self := o.mesh.Self()
	for i := range keys {
		var v []byte
		if v, b, ok = cutBytes(b); !ok {
			return 0, "", nil, bad
		}
		keys[i] = core.StateKey(v)
		if pi := model.PartitionAfter(h, keys[i], o.count); o.owners[pi] != self {
			return 0, "", nil, fmt.Errorf("lookup of a key of partition %d, which process %d owns, not this one", pi, o.owners[pi])
		}
	}
	if len(b) > 0 {
		return 0, "", nil, bad
	}
	return id, core.StepID(step), keys, nil
}

// onRead serves a peer's lookup: this process reads the keys from its
// partitions and replies, off the handler.
func (o *OnDemand) onRead(from int, b []byte) error {
	rd := o.reads
	rd.mu.Lock()
	opened := rd.opened
	rd.mu.Unlock()
	if !opened {
		return fmt.Errorf("lookup before this process opened its state")
	}
	id, step, keys, err := o.readRequest(b)
	if err != nil {
		return err
	}
	rd.serve(true, func(ctx context.Context) {
		var body []byte
		err := o.store.ReadState(ctx, step, keys, func(j int, e core.Epoch, v []byte) error {
			body = appendReadRow(body, j, e, v)
			if len(body) < replyFrame {
				return nil
			}
			err := o.mesh.Send(ctx, from, "rec.reply", frame(id, 0, body))
			body = body[:0]
			return err
		})
		if err != nil {
			o.mesh.Send(ctx, from, "rec.reply", frame(id, flagLast|flagError, []byte(err.Error())))
			return
		}
		o.mesh.Send(ctx, from, "rec.reply", frame(id, flagLast, body))
	})
	return nil
}

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
		var page []byte
		err := o.store.ScanState(ctx, q.step, q.after, q.every, q.share.Has, func(rows []core.Loaded) error {
			for _, row := range rows {
				page = appendScanRow(page, row.Key, row.Epoch, row.Value)
				if len(page) >= replyFrame {
					if err := send(0, page); err != nil {
						return err
					}
					page = nil
				}
			}
			return nil
		})
		switch {
		case errors.Is(err, errScanStopped):
		case err != nil:
			send(flagLast|flagError, []byte(err.Error()))
		default:
			send(flagLast, page)
		}
	})
	return nil
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
	owning := rd.owning
	rd.mu.Unlock()
	var remote []int
	for _, p := range owning {
		if p != self {
			remote = append(remote, p)
		}
	}
	if len(remote) == 0 {
		if !r.ownsAny(self) {
			return nil
		}
		return r.store.ScanState(ctx, step, after, every, share.Has, fn)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var srcs []*scanSource
	type open struct {
		id   uint64
		to   int
		done *bool
	}
	var opened []open
	defer func() {
		for _, s := range opened {
			rd.retire(s.id)
			if !*s.done && ctx.Err() == nil {
				r.mesh.Send(ctx, s.to, "rec.scan.stop", binary.AppendUvarint(nil, s.id))
			}
		}
	}()
	for _, p := range remote {
		id, c := rd.newCall(p)
		src := &scanSource{from: p}
		opened = append(opened, open{id, p, &src.last})
		src.next = func() (byte, []byte, error) {
			flags, body, err := c.next(sctx, r)
			if err == nil && flags&flagLast == 0 {
				err = r.mesh.Send(sctx, p, "rec.scan.more", binary.AppendUvarint(nil, id))
			}
			return flags, body, err
		}
		q := scanRequest{id: id, step: step, after: after, every: every, share: share}
		if err := r.mesh.Send(ctx, p, "rec.scan", q.encode()); err != nil {
			return fmt.Errorf("ask process %d to scan %s: %w", p, step, err)
		}
		srcs = append(srcs, src)
	}
	if r.ownsAny(self) {
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
		send := func(m pageMsg) error {
			select {
			case pages <- m:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		var page []byte
		err := o.store.ScanState(ctx, q.step, q.after, q.every, q.share.Has, func(rows []core.Loaded) error {
			for _, row := range rows {
				page = appendScanRow(page, row.Key, row.Epoch, row.Value)
				if len(page) >= replyFrame {
					if err := send(pageMsg{0, page}); err != nil {
						return err
					}
					page = nil
				}
			}
			return nil
		})
		if err != nil {
			send(pageMsg{flagLast | flagError, []byte(err.Error())})
			return
		}
		send(pageMsg{flagLast, page})
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
