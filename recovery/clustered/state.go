package clustered

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/flowkeep/flowkeep/core"
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
//     partition, sends each remote share as one request ("rec.read"; a
//     very large batch as a few), reads the local share meanwhile, and
//     waits for the replies. The owner reads its share as a local lookup
//     would (Store.ReadState) on a goroutine of its own (at most
//     servedReads at once), and replies in frames of at most replyFrame
//     bytes.
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
	// maxKeysPerRead bounds the keys one lookup request may name, and
	// requestBytes about the bytes of its keys (a larger batch goes as
	// several requests).
	maxKeysPerRead = 1 << 16
	requestBytes   = 4 << 20
)

// reads is the clustered recovery's share of state on demand.
type reads struct {
	mu       sync.Mutex
	nextID   uint64
	calls    map[uint64]*call // requests of this process still answered
	served   map[servedKey]*scanSession
	opened   bool
	full     bool       // commits are read back (OpenState's full): Written counts
	owning   []int      // the processes owning partitions
	selfOwns bool       // this one among them
	written  [][]uint64 // per process, per worker: commits readable there, as announced
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
	rd.owning, rd.selfOwns = owning, r.ownsAny(r.mesh.Self())
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
	// Every process reads commits back (full), or none: the cluster's
	// identity, which the processes share, includes the bound.
	steps := make([]core.StepID, 0, len(info.Steps))
	for id := range info.Steps {
		steps = append(steps, id)
	}
	slices.Sort(steps)
	payload, _ := json.Marshal(steps)
	all, err := r.mesh.Gather(ctx, "rec.state", payload)
	if err != nil {
		return nil, err
	}
	has := map[core.StepID]bool{}
	for p, b := range all {
		var ids []core.StepID
		if err := json.Unmarshal(b, &ids); err != nil {
			return nil, fmt.Errorf("steps with state from process %d: %w", p, err)
		}
		for _, id := range ids {
			has[id] = true
		}
	}
	return has, nil
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
	selfOwns := rd.selfOwns
	rd.mu.Unlock()
	if selfOwns {
		n = min(n, r.store.Written(w))
	}
	if n == 1<<64-1 {
		return 0 // no process owns a partition: nothing is readable
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

// wakeWrittenLocked wakes WaitWritten callers (rd.mu held).
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
