package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowkeep/flowkeep/internal/mesh"
)

// Config says how to run a flow.
type Config struct {
	// Workers is the number of workers of this process; a cluster of P
	// processes has P*Workers workers in all, and keys route to
	// KeyHash(k) mod (P*Workers).
	Workers int
	// Cluster, if set with more than one address, makes this run one
	// process of a cluster.
	Cluster *ClusterConfig
	// EpochInterval is how often inputs close an epoch (the snapshot
	// interval). Zero means 10s. Epochs never hold items back: a partial
	// batch moves on as soon as its upstream has nothing more to give.
	EpochInterval time.Duration
	// MaxDelay bounds how long an item waits in a partial batch while input
	// keeps arriving (under load, batches fill; when input pauses they are
	// handed on at once). Zero means 5ms.
	MaxDelay time.Duration
	// Recovery keeps snapshots; nil runs without recovery. Run owns it: it
	// closes it before returning, whatever happens (also when the run fails
	// before it starts).
	Recovery Recovery
	// OnEpoch, if set, is told each epoch this process opens (every
	// EpochInterval while input lasts; in a cluster as process 0's clock
	// says). It is called from the clock and must return quickly.
	OnEpoch func(Epoch)
	// ItemsRead, if set, counts the items the sources of this process read
	// (for progress displays).
	ItemsRead *atomic.Int64
	// OnStretch, if set, is told when an epoch lasted longer than
	// EpochInterval because the snapshot before it was not yet durable
	// (pacing), and by how much. Called from the clock.
	OnStretch func(e Epoch, by time.Duration)
	// OnStart, if set, is told the run's RunInfo once recovery has begun
	// (before any input is read).
	OnStart func(RunInfo)
	// OnWarning, if set, receives what sources and sinks warn the user of
	// (Warnf); without it warnings go to the standard logger.
	OnWarning func(string)
	// StateMemory, if positive, bounds the memory (in bytes) that the keyed
	// state of this process's stateful steps may use: the keys in memory
	// become a cache over the recovery partitions (see package doc, "State
	// larger than memory"). It needs a Recovery that is a StateReader.
	StateMemory int64
}

// Result summarises a finished run.
type Result struct {
	StartEpoch Epoch
	// FinalEpoch is the epoch in which input ended; the next run starts at
	// FinalEpoch+1.
	FinalEpoch Epoch
	// Counters holds the flow's counters (see Flow.Counter).
	Counters map[string]int64
	// IgnoredRows counts loaded snapshot rows of steps this flow does not have.
	IgnoredRows int64
}

// Run executes the flow until every input ends, or until ctx is cancelled or
// a step fails.
func Run(ctx context.Context, f *Flow, cfg Config) (*Result, error) {
	fail := func(err error) (*Result, error) {
		if cfg.Recovery != nil {
			cfg.Recovery.Close()
		}
		return nil, err
	}
	if err := f.Err(); err != nil {
		return fail(err)
	}
	if cfg.Workers < 1 {
		return fail(fmt.Errorf("workers must be at least 1, got %d", cfg.Workers))
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = 5 * time.Millisecond
	}
	if cfg.EpochInterval <= 0 {
		cfg.EpochInterval = 10 * time.Second
	}
	x := &execution{flow: f, cfg: cfg, workers: cfg.Workers, local: cfg.Workers, procs: 1, rec: cfg.Recovery}
	if c := cfg.Cluster; c != nil && len(c.Addresses) > 1 {
		x.procs, x.proc = len(c.Addresses), c.ProcessID
		x.workers = cfg.Workers * x.procs
	}
	return x.run(ctx)
}

// execution is one run of a flow in this process.
type execution struct {
	flow    *Flow
	cfg     Config
	workers int // in the whole cluster
	local   int // on this process: global workers proc*local .. proc*local+local-1
	proc    int
	procs   int
	mesh    *mesh.Mesh
	cl      clusterState
	rec     Recovery
	start   Epoch
	info    RunInfo // complete after load

	ctx    context.Context
	cancel context.CancelCauseFunc
	clock  *clock

	inboxes   map[*node][]chan msg
	pools     map[*node]*sync.Pool        // recycled batches per exchanged step
	resume    map[*node]map[string][]byte // source positions by input node
	resumeMu  sync.Mutex
	roots     map[*node][]rootOp
	senders   map[*node]int      // per exchanged step: how many segments send to each instance
	sinkParts map[*node][]string // per output step: its sink's partitions in this run
	srcSegs   []*sourceSeg
	exSegs    []*exchangedSeg
	ledgers   []*ledger
	ignored   atomic.Int64
}

// segment is one goroutine's share of the flow: a source partition or one
// exchanged step on one worker, with the stateless steps after it.
type segment struct {
	x       *execution
	node    *node // the input or exchanged step at the root
	worker  WorkerIndex
	sender  int // index as a sender into downstream exchanges
	comp    int // index in the worker's ledger
	changes []Change
	vals    []byte // encoded values of changes, until they are handed over
}

func (s *segment) record(step StepID, key string, epoch Epoch, value []byte) {
	if s.x.rec == nil {
		return // nothing keeps snapshots
	}
	s.changes = append(s.changes, Change{Step: step, Key: StateKey(key), Epoch: epoch, Value: value})
}

// snapshotChunk is how many changes a segment hands to recovery at once
// while it snapshots: an epoch that changed a million keys is written in
// pieces, never held whole. What recovery holds while it writes is a
// group of such pieces per partition (up to 80 of them queued or in one
// transaction), so the piece's size sets the memory that recovery adds to
// a run: at 500k changed keys an epoch, 16k-change pieces kept peak RSS at
// 1.4x a run without recovery, 4k-change pieces at 1.2x, at no more CPU
// (bench/run.sh RecoveryCost).
const snapshotChunk = 1 << 12

// flushIfFull hands the changes recorded so far to recovery once there are
// snapshotChunk of them, without moving the segment's frontier.
func (s *segment) flushIfFull() error {
	if len(s.changes) < snapshotChunk {
		return nil
	}
	l := s.x.ledgers[s.worker]
	return s.hand(l.frontOf(s.comp))
}

// hand gives the recorded changes to the ledger with frontier, and keeps
// the slice for the next ones (recovery does not keep it).
func (s *segment) hand(frontier Epoch) error {
	ch := s.changes
	err := s.x.ledgers[s.worker].report(s.x.ctx, s.comp, frontier, ch)
	clear(ch)
	s.changes = ch[:0]
	s.vals = s.vals[:0]
	return err
}

// reportEnd reports that the segment finished the final epoch. Worker 0's
// ledger also records that epoch as the end of this pass over the input.
func (s *segment) reportEnd(final Epoch) error {
	if s.worker == 0 {
		s.x.ledgers[0].markEnd(final)
	}
	return s.report(final + 1)
}

func (s *segment) report(frontier Epoch) error { return s.hand(frontier) }

// failedShutdown bounds how long a failed run waits for recovery to write
// what it had accepted.
const failedShutdown = 30 * time.Second

func (x *execution) run(parent context.Context) (*Result, error) {
	x.ctx, x.cancel = context.WithCancelCause(parent)
	defer x.cancel(nil)
	closeRec := func(err error) error {
		if x.rec == nil {
			return err
		}
		var cerr error
		if sd, ok := x.rec.(RecoveryShutdowner); ok && err != nil {
			// The run failed: what is still being written may wait for a
			// disk that is gone; do not hang on it.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), failedShutdown)
			cerr = sd.Shutdown(ctx)
			cancel()
		} else {
			cerr = x.rec.Close()
		}
		if err == nil && cerr != nil {
			err = fmt.Errorf("recovery: %w", cerr)
		}
		return err
	}
	// teardown ends the run's components in reverse dependency order: the
	// mesh's handlers (they write into recovery), recovery, then the mesh
	// (recovery sends on it, and the peers hear err from it).
	teardown := func(err error) error {
		if x.mesh == nil {
			return closeRec(err)
		}
		if serr := x.stopMeshHandlers(); err == nil && serr != nil {
			err = serr
		}
		err = closeRec(err)
		if cerr := x.closeMesh(err); err == nil && cerr != nil {
			err = cerr
		}
		return err
	}
	if x.procs > 1 {
		if err := x.joinCluster(); err != nil {
			return nil, closeRec(err)
		}
	}
	info := RunInfo{StartEpoch: 1, Workers: x.workers}
	if x.rec != nil {
		var err error
		if info, err = x.rec.Begin(x.ctx, x.workers); err != nil {
			return nil, teardown(err)
		}
		info.Workers = x.workers
		info.Recovery = true
	}
	x.start = info.StartEpoch
	x.info = info
	if x.cfg.OnStart != nil {
		x.cfg.OnStart(info)
	}
	final, err := x.execute()
	if err == nil && x.mesh != nil {
		// Every process finished and sent its last commits before this.
		err = x.mesh.Barrier(x.ctx, "done")
	}
	if err = teardown(err); err != nil {
		return nil, err
	}
	res := &Result{StartEpoch: x.start, FinalEpoch: final, Counters: map[string]int64{}, IgnoredRows: x.ignored.Load()}
	for name, c := range x.flow.counters {
		res.Counters[name] = c.Load()
	}
	return res, nil
}

func (x *execution) execute() (Epoch, error) {
	if err := x.plan(); err != nil {
		return 0, err
	}
	rd, err := x.stateReader()
	if err != nil {
		return 0, err
	}
	if x.loads() || rd != nil {
		if x.mesh != nil {
			// Rows for this process's instances may only come once they exist.
			if err := x.mesh.Barrier(x.ctx, "planned"); err != nil {
				return 0, err
			}
		}
		if err := x.load(rd); err != nil {
			return 0, err
		}
	}
	x.ctx = context.WithValue(x.ctx, runInfoKey{}, x.info)
	if x.cfg.OnWarning != nil {
		x.ctx = WithWarnings(x.ctx, x.cfg.OnWarning)
	}
	opened := 0
	for _, es := range x.exSegs {
		if err = es.root.open(x.ctx); err != nil {
			break
		}
		opened++
	}
	if err == nil && x.mesh != nil {
		// No data may flow before every process is ready to receive it.
		err = x.mesh.Barrier(x.ctx, "ready")
	}
	if err == nil {
		err = x.runSegments()
	}
	if err == nil && x.rec != nil {
		// Sinks that publish only durable output publish the final epoch's
		// once every epoch of the run is durable.
		err = x.publishDurable(x.clock.finalEpoch() + 1)
	}
	for _, es := range x.exSegs[:opened] {
		if cerr := es.root.close(); err == nil {
			err = cerr
		}
	}
	return x.clock.finalEpoch(), err
}

// sourceSeg reads one source partition.
type sourceSeg struct {
	seg   *segment
	in    *node
	part  string
	chain op
}

// exchangedSeg runs one exchanged step on one worker.
type exchangedSeg struct {
	seg      *segment
	root     rootOp
	inbox    chan msg
	rinbox   chan msg // from other processes (nil without a cluster)
	nsenders int
}

// plan lists partitions, sizes every exchange, and builds this process's
// segments with their chains of ops.
func (x *execution) plan() error {
	x.inboxes = map[*node][]chan msg{}
	x.pools = map[*node]*sync.Pool{}
	x.resume = map[*node]map[string][]byte{}
	x.roots = map[*node][]rootOp{}
	x.sinkParts = map[*node][]string{}
	parts := map[*node][]string{}
	total := 0
	for _, in := range x.flow.inputs {
		ps, err := in.input.partitions(x.ctx)
		if err != nil {
			return fmt.Errorf("input %s: %w", in.id, err)
		}
		parts[in] = ps
		x.resume[in] = map[string][]byte{}
		total += len(ps)
	}
	for _, n := range x.flow.nodes {
		if out, ok := n.exchanged.(interface {
			listPartitions(context.Context) ([]string, error)
		}); ok {
			ps, err := out.listPartitions(x.ctx)
			if err != nil {
				return fmt.Errorf("output %s: list its partitions: %w", n.id, err)
			}
			x.sinkParts[n] = ps
		}
	}
	x.clock = newClock(x.start, total)
	x.clock.onEpoch = x.cfg.OnEpoch
	x.clock.onStretch = x.cfg.OnStretch
	if x.rec != nil {
		x.clock.pace = x.rec.WaitDurable
	}
	if x.mesh != nil {
		if err := x.checkSamePartitions(parts); err != nil {
			return err
		}
		x.setupClusterClock()
		x.setupClusterExchanges()
	}
	for _, n := range x.flow.nodes {
		if n.kind == kindExchanged {
			chs := make([]chan msg, x.workers)
			for w := range chs {
				if x.isLocal(w) {
					chs[w] = make(chan msg, inboxDepth)
				}
			}
			x.inboxes[n] = chs
			x.pools[n] = &sync.Pool{}
		}
	}
	comps := make([]int, x.workers)
	newSeg := func(n *node, w WorkerIndex, sender int) *segment {
		s := &segment{x: x, node: n, worker: w, sender: sender, comp: comps[w]}
		comps[w]++
		return s
	}
	for _, n := range x.flow.nodes {
		if n.kind != kindExchanged {
			continue
		}
		ns := x.workers
		if up := n.upstreamRoot(); up.kind == kindInput {
			ns = len(parts[up])
		}
		if x.senders == nil {
			x.senders = map[*node]int{}
		}
		x.senders[n] = ns
		if x.mesh != nil {
			procs := make([]int, ns)
			for i := range procs {
				if up := n.upstreamRoot(); up.kind == kindInput {
					procs[i] = x.ownerOf(int(WorkerFor(parts[up][i], x.workers)))
				} else {
					procs[i] = x.ownerOf(i)
				}
			}
			x.cl.senderProc[n] = procs
		}
		rs := make([]rootOp, x.workers)
		for w := 0; w < x.workers; w++ {
			if !x.isLocal(w) {
				continue
			}
			seg := newSeg(n, WorkerIndex(w), w)
			rs[w] = n.exchanged.root(seg, x.downstream(seg, n))
			es := &exchangedSeg{seg: seg, root: rs[w], inbox: x.inboxes[n][w], nsenders: ns}
			if x.mesh != nil {
				es.rinbox = x.cl.rinbox[n][w]
			}
			x.exSegs = append(x.exSegs, es)
		}
		x.roots[n] = rs
	}
	for _, in := range x.flow.inputs {
		for i, p := range parts[in] {
			w := WorkerFor(p, x.workers)
			if !x.isLocal(int(w)) {
				continue
			}
			seg := newSeg(in, w, i)
			x.srcSegs = append(x.srcSegs, &sourceSeg{seg: seg, in: in, part: p, chain: x.downstream(seg, in)})
		}
	}
	x.ledgers = make([]*ledger, x.workers)
	for w := range x.ledgers {
		if x.isLocal(w) {
			x.ledgers[w] = newLedger(WorkerIndex(w), comps[w], x.start, x.rec)
		}
	}
	if x.mesh != nil {
		// Frames from peers may be acted on from here (see clusterState).
		if x.loads() {
			x.cl.phase.Store(phaseLoading)
		} else {
			x.cl.phase.Store(phaseRunning)
		}
	}
	return nil
}

// loads says whether this run loads a snapshot before it starts.
func (x *execution) loads() bool { return x.rec != nil && x.start > 1 }

// downstream builds the ops that consume n's output inside seg.
func (x *execution) downstream(seg *segment, n *node) op {
	var outs fanout
	for _, c := range n.children {
		switch c.kind {
		case kindStateless:
			outs = append(outs, c.stateless.build(seg, x.downstream(seg, c)))
		case kindExchanged:
			outs = append(outs, c.exchanged.sender(x, c, seg.sender))
		}
	}
	switch len(outs) {
	case 0:
		return nopOp{}
	case 1:
		return outs[0]
	}
	return outs
}

// stateReader returns the recovery as a StateReader if the run reads
// state on demand: it resumes, or bounds its state, or runs in a cluster
// (whose processes all take this path: they agree on recovery and the
// bound, which are part of the cluster's identity), and has stateful
// steps.
func (x *execution) stateReader() (StateReader, error) {
	rd, ok := x.rec.(StateReader)
	if x.cfg.StateMemory > 0 && !ok {
		return nil, fmt.Errorf("bounding state memory needs a recovery that reads state on demand; this one (%T) loads all state", x.rec)
	}
	if !ok || !(x.loads() || x.cfg.StateMemory > 0 || x.mesh != nil) {
		return nil, nil
	}
	for _, n := range x.flow.nodes {
		if lazyNode(n) {
			return rd, nil
		}
	}
	return nil, nil
}

// lazyNode says whether n is a stateful step (whose state can be read on
// demand).
func lazyNode(n *node) bool {
	if n.kind != kindExchanged {
		return false
	}
	_, ok := n.exchanged.(interface{ lazy() })
	return ok
}

// load routes every snapshot row below the start epoch to the instance that
// owns it: source positions to the input, state and sink positions to the
// exchanged step's instance on worker KeyHash(key) mod W, on whichever
// process hosts that worker. With rd, the state of stateful steps is not
// loaded but read on demand.
func (x *execution) load(rd StateReader) error {
	defer gcPause()()
	if x.mesh != nil {
		x.cl.loadBuf = map[int][]byte{}
	}
	if rd != nil {
		return x.openState(rd)
	}
	if h, ok := x.rec.(KeyHinter); ok && x.mesh == nil {
		counts, err := h.KeyHint(x.ctx, x.start)
		if err != nil {
			return err
		}
		for n, rs := range x.roots {
			for _, r := range rs {
				if sz, ok := r.(presizer); ok && r != nil && counts[n.id] > 0 {
					sz.presize(int(counts[n.id]/int64(x.workers)) + 1)
				}
			}
		}
	}
	err := x.rec.Load(x.ctx, x.start, func(rows []Loaded) error { return x.applyLoaded(rows, true) })
	if err != nil {
		return err
	}
	if x.mesh != nil {
		if err := x.flushLoaded(); err != nil {
			return err
		}
		// After this every row every process scanned has arrived here.
		if err := x.mesh.Barrier(x.ctx, "loaded"); err != nil {
			return err
		}
		x.cl.phaseMu.Lock()
		x.cl.phase.Store(phaseRunning)
		x.cl.phaseMu.Unlock()
	}
	return nil
}

// openState opens the state of stateful steps for reading on demand,
// loading the other rows.
func (x *execution) openState(rd StateReader) error {
	lazy := func(id StepID) bool {
		n := x.flow.ids[id]
		return n != nil && lazyNode(n)
	}
	has, err := rd.OpenState(x.ctx, x.start, lazy, x.cfg.StateMemory > 0, func(rows []Loaded) error { return x.applyLoaded(rows, true) })
	if err != nil {
		return err
	}
	var budget *memBudget
	if x.cfg.StateMemory > 0 {
		budget = &memBudget{limit: x.cfg.StateMemory, extra: rd.StateBytes}
	}
	for n, rs := range x.roots {
		for _, r := range rs {
			if lr, ok := r.(lazyRoot); ok {
				lr.useState(rd, has[n.id], budget)
			}
		}
	}
	if x.mesh != nil {
		if err := x.flushLoaded(); err != nil {
			return err
		}
		if err := x.mesh.Barrier(x.ctx, "loaded"); err != nil {
			return err
		}
		x.cl.phaseMu.Lock()
		x.cl.phase.Store(phaseRunning)
		x.cl.phaseMu.Unlock()
	}
	return nil
}

// presizer is a root that can size its state for n keys before a load.
type presizer interface{ presize(n int) }

// restoreTarget is one root instance and the rows of a batch it owns.
type restoreTarget struct {
	n     *node
	owner int
}

// applyLoaded restores a batch of rows here (one call per owning instance,
// not one lock per row), or (mine: scanned by this process) forwards rows
// to the process that owns them.
func (x *execution) applyLoaded(rows []Loaded, mine bool) error {
	var lastStep StepID
	var last *node
	// Group the batch's state rows by target in two passes (count, then
	// place), so no per-target slice grows row by row.
	var targets []restoreTarget
	var counts []int
	which := make([]int32, len(rows)) // target index, or -1
	lastT := -1
	for i, r := range rows {
		which[i] = -1
		if r.Step != lastStep || last == nil {
			lastStep, last = r.Step, x.flow.ids[r.Step]
		}
		n := last
		switch {
		case r.Step == runtimeStep && r.Key == "end":
			e, err := parseEnd(r.Value)
			if err != nil {
				return err
			}
			x.resumeMu.Lock()
			x.info.PreviousEnd = e
			x.resumeMu.Unlock()
			if mine && x.mesh != nil {
				for p := 0; p < x.procs; p++ {
					if p == x.proc {
						continue
					}
					if err := x.routeLoaded(p, r); err != nil {
						return err
					}
				}
			}
			continue
		case n == nil || (n.kind != kindInput && n.kind != kindExchanged):
			x.ignored.Add(1)
			continue
		}
		owner := int(WorkerFor(string(r.Key), x.workers))
		if !x.isLocal(owner) {
			if !mine {
				return fmt.Errorf("row %s/%s for worker %d, which is not here", r.Step, r.Key, owner)
			}
			if err := x.routeLoaded(x.ownerOf(owner), r); err != nil {
				return err
			}
			continue
		}
		if n.kind == kindInput {
			x.resumeMu.Lock()
			x.resume[n][string(r.Key)] = append([]byte{}, r.Value...)
			x.resumeMu.Unlock()
			continue
		}
		t := restoreTarget{n, owner}
		if lastT < 0 || targets[lastT] != t {
			lastT = slices.Index(targets, t)
			if lastT < 0 {
				lastT = len(targets)
				targets = append(targets, t)
				counts = append(counts, 0)
			}
		}
		which[i] = int32(lastT)
		counts[lastT]++
	}
	if len(targets) == 0 {
		return nil
	}
	groups := make([][]Loaded, len(targets))
	all := make([]Loaded, 0, len(rows))
	for i, c := range counts {
		groups[i] = all[len(all) : len(all) : len(all)+c]
		all = all[:len(all)+c]
	}
	for i, t := range which {
		if t >= 0 {
			groups[t] = append(groups[t], rows[i])
		}
	}
	for i, t := range targets {
		if err := x.roots[t.n][t.owner].restore(groups[i]); err != nil {
			return fmt.Errorf("restore %s: %w", t.n.id, err)
		}
	}
	return nil
}

// runSegments starts one goroutine per segment and a ticker closing epochs,
// and waits for all of them. The first error cancels the rest.
func (x *execution) runSegments() error {
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) {
		errOnce.Do(func() {
			// A step that merely saw the run cancelled reports the cause.
			if errors.Is(err, context.Canceled) && x.ctx.Err() != nil {
				err = context.Cause(x.ctx)
			}
			firstErr = err
			x.cancel(err)
		})
	}
	for _, ss := range x.srcSegs {
		wg.Add(1)
		go func(ss *sourceSeg) {
			defer wg.Done()
			if err := x.runSource(ss); err != nil {
				fail(err)
			}
		}(ss)
	}
	for _, es := range x.exSegs {
		wg.Add(1)
		go func(es *exchangedSeg) {
			defer wg.Done()
			if err := x.runExchanged(es); err != nil {
				fail(err)
			}
		}(es)
	}
	tickDone := make(chan struct{})
	go func() {
		defer close(tickDone)
		if err := x.clock.tick(x.ctx, x.cfg.EpochInterval); err != nil {
			fail(fmt.Errorf("close epochs: %w", err))
		}
	}()
	wg.Wait()
	x.clock.stop()
	<-tickDone
	if firstErr == nil && x.ctx.Err() != nil {
		firstErr = context.Cause(x.ctx)
	}
	return firstErr
}

func (x *execution) runSource(ss *sourceSeg) error {
	seg := ss.seg
	x.resumeMu.Lock()
	last := x.resume[ss.in][ss.part]
	x.resumeMu.Unlock()
	p, err := ss.in.input.open(x.ctx, ss.part, last)
	if err != nil {
		return fmt.Errorf("input %s: open partition %q: %w", ss.in.id, ss.part, err)
	}
	defer p.Close()
	wait := min(100*time.Millisecond, x.cfg.EpochInterval)
	cur := x.start
	eof := false
	// Items pushed since the last drain, and when the first of them was:
	// while they wait, the source is polled without waiting, and the chain
	// is drained as soon as a poll finds nothing (or MaxDelay passed).
	pending := false
	var since time.Time
	snap := func(e Epoch) {
		if pos := p.Position(); pos != nil && string(pos) != string(last) {
			last = append([]byte(nil), pos...)
			seg.record(ss.in.id, ss.part, e, last)
		}
	}
	for {
		if !eof {
			w := wait
			if pending {
				w = 0
			}
			b, n, err := p.next(x.ctx, w)
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("input %s: partition %q: %w", ss.in.id, ss.part, err)
			}
			if n > 0 {
				if perr := ss.chain.push(b); perr != nil {
					return perr
				}
				if x.cfg.ItemsRead != nil {
					x.cfg.ItemsRead.Add(int64(n))
				}
				if !pending {
					pending, since = true, time.Now()
				}
			}
			if pending && (n == 0 || err != nil || time.Since(since) >= x.cfg.MaxDelay) {
				if derr := ss.chain.drain(); derr != nil {
					return derr
				}
				pending = false
			}
			if err != nil {
				eof = true
				x.clock.partitionDone()
			}
		}
		now, final, changed := x.clock.state()
		if now > cur {
			snap(cur)
			if err := ss.chain.advance(cur, now); err != nil {
				return err
			}
			cur = now
			if err := seg.report(cur); err != nil {
				return err
			}
		}
		if final {
			snap(cur)
			if err := ss.chain.finish(cur); err != nil {
				return err
			}
			return seg.reportEnd(cur)
		}
		if eof {
			select {
			case <-changed:
			case <-x.ctx.Done():
				return context.Cause(x.ctx)
			}
		}
	}
}

func (x *execution) runExchanged(es *exchangedSeg) error {
	seg := es.seg
	if es.nsenders == 0 {
		return x.followClock(es)
	}
	r := newReceiver(es.root, x.start, es.nsenders, seg.report)
	r.pool = x.pools[seg.node]
	var credits *creditReturn
	if x.mesh != nil {
		credits = &creditReturn{x: x, node: x.cl.nodeIdx[seg.node], dst: uint32(seg.worker), owed: map[int]uint32{}}
	}
	// Data applied since the last drain, and when: drained once the inbox
	// is empty (the upstream has nothing more right now) or MaxDelay passed.
	pending := false
	var since time.Time
	for {
		var m msg
		select {
		case m = <-es.inbox:
		case m = <-es.rinbox:
		case <-x.ctx.Done():
			return context.Cause(x.ctx)
		}
		if err := r.handle(m); err != nil {
			return err
		}
		if m.kind == msgData && !pending {
			pending, since = true, time.Now()
		}
		if pending && (len(es.inbox) == 0 && len(es.rinbox) == 0 || time.Since(since) >= x.cfg.MaxDelay) {
			if err := es.root.drain(); err != nil {
				return err
			}
			pending = false
		}
		if credits != nil {
			if err := credits.add(m.origin); err != nil {
				return err
			}
		}
		if r.done() {
			if err := es.root.finish(r.cur); err != nil {
				return err
			}
			return seg.reportEnd(r.cur)
		}
	}
}

// followClock drives an exchanged step whose input has no partitions: it only
// sees epochs close, and end of input when every other input ended.
func (x *execution) followClock(es *exchangedSeg) error {
	cur := x.start
	for {
		now, final, changed := x.clock.state()
		if now > cur {
			if err := es.root.advance(cur, now); err != nil {
				return err
			}
			cur = now
			if err := es.seg.report(cur); err != nil {
				return err
			}
		}
		if final {
			if err := es.root.finish(cur); err != nil {
				return err
			}
			return es.seg.reportEnd(cur)
		}
		select {
		case <-changed:
		case <-x.ctx.Done():
			return context.Cause(x.ctx)
		}
	}
}

// clock closes epochs every interval until every source partition ended;
// the epoch current at that moment is final. In a cluster, process 0's clock
// leads (hook broadcasts its changes) and the others follow (set).
type clock struct {
	mu      sync.Mutex
	epoch   Epoch
	final   bool
	pending int
	changed chan struct{}
	stopped chan struct{}
	stopOne sync.Once

	hook      func(e Epoch, final bool) // leader: called after each change
	onEpoch   func(Epoch)               // Config.OnEpoch
	onStretch func(Epoch, time.Duration)
	// pace, if set, waits until every epoch below its frontier is durable:
	// an epoch closes only once the one before it is, so when snapshots
	// fall behind, epochs stretch instead of their snapshots queuing up.
	pace     func(ctx context.Context, frontier Epoch) error
	follower bool   // does not tick; set by the leader's messages
	forward  func() // follower: report a partition's end to the leader
}

func newClock(start Epoch, partitions int) *clock {
	c := &clock{epoch: start, pending: partitions, changed: make(chan struct{}), stopped: make(chan struct{})}
	if partitions == 0 {
		c.final = true
	}
	return c
}

// state returns the current epoch, whether it is final, and a channel closed
// at the next change.
func (c *clock) state() (Epoch, bool, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch, c.final, c.changed
}

func (c *clock) broadcastLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *clock) partitionDone() {
	if c.forward != nil {
		c.forward()
		return
	}
	c.ended()
}

// ended counts the end of one source partition (on the leader, whose
// followers report theirs); it reports false, and counts nothing, when every
// partition had already ended.
func (c *clock) ended() bool {
	c.mu.Lock()
	if c.pending <= 0 {
		c.mu.Unlock()
		return false
	}
	c.pending--
	became := c.pending == 0 && !c.final
	if became {
		c.final = true
		c.broadcastLocked()
	}
	e := c.epoch
	c.mu.Unlock()
	if became && c.hook != nil {
		c.hook(e, true)
	}
	return true
}

// set applies the leader's epoch (and finality).
func (c *clock) set(e Epoch, final bool) {
	c.mu.Lock()
	opened := e > c.epoch
	if opened {
		c.epoch = e
	}
	if final {
		c.final = true
	}
	c.broadcastLocked()
	c.mu.Unlock()
	if opened && c.onEpoch != nil {
		c.onEpoch(e)
	}
}

func (c *clock) finalEpoch() Epoch {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

// tick closes an epoch every interval until the clock stops or ctx ends.
// It returns pacing's error (recovery failed to make epochs durable) while
// the run goes on, so that the run fails rather than stop closing epochs.
func (c *clock) tick(ctx context.Context, every time.Duration) error {
	if c.follower {
		return nil
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if c.pace != nil {
				c.mu.Lock()
				e, final := c.epoch, c.final
				c.mu.Unlock()
				if !final {
					began := time.Now()
					if err := c.waitDurable(ctx, e); err != nil {
						select {
						case <-c.stopped:
							return nil // the run ends; its error surfaces elsewhere
						default:
						}
						if ctx.Err() != nil {
							return nil
						}
						return err
					}
					if by := time.Since(began); by > time.Millisecond {
						if c.onStretch != nil {
							c.onStretch(e, by)
						}
						t.Reset(every)
					}
				}
			}
			c.mu.Lock()
			ticked := !c.final
			if ticked {
				c.epoch++
				c.broadcastLocked()
			}
			e := c.epoch
			c.mu.Unlock()
			if ticked && c.hook != nil {
				c.hook(e, false)
			}
			if ticked && c.onEpoch != nil {
				c.onEpoch(e)
			}
		case <-c.stopped:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

func (c *clock) stop() { c.stopOne.Do(func() { close(c.stopped) }) }

// waitDurable waits until epoch e-1 is durable (frontier e), or until input
// ends or the clock stops (then the epoch closes anyway, as the final one).
func (c *clock) waitDurable(ctx context.Context, e Epoch) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			c.mu.Lock()
			final, ch := c.final, c.changed
			c.mu.Unlock()
			if final {
				cancel()
				return
			}
			select {
			case <-ch:
			case <-c.stopped:
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	err := c.pace(ctx, e)
	if err != nil && ctx.Err() != nil {
		select {
		case <-c.stopped:
			return err
		default:
		}
		return nil // input ended meanwhile: no more pacing needed
	}
	return err
}

// ledger hands a worker's snapshot rows to Recovery as its components
// report them, and moves the worker's frontier once every component has
// closed its epochs. Changes of epochs the frontier has not passed count
// only when it does (see Recovery.Commit).
type ledger struct {
	mu       sync.Mutex
	commits  uint64 // Commit calls so far (write tickets: StateReader.Written)
	worker   WorkerIndex
	front    []Epoch
	frontier Epoch
	rec      Recovery
	ended    bool
	end      []Change // the runtime row naming the final epoch, until committed
}

func newLedger(w WorkerIndex, comps int, start Epoch, rec Recovery) *ledger {
	l := &ledger{worker: w, front: make([]Epoch, comps), frontier: start, rec: rec}
	for i := range l.front {
		l.front[i] = start
	}
	return l
}

// frontOf is component comp's last reported frontier.
func (l *ledger) frontOf(comp int) Epoch {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.front[comp]
}

// markEnd records (once) the runtime row naming the final epoch.
func (l *ledger) markEnd(final Epoch) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.ended = true
	l.end = []Change{{Step: runtimeStep, Key: "end", Epoch: final, Value: strconv.AppendUint(nil, uint64(final), 10)}}
}

func (l *ledger) report(ctx context.Context, comp int, frontier Epoch, changes []Change) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rec == nil {
		return nil
	}
	l.front[comp] = max(l.front[comp], frontier)
	if l.end != nil {
		changes = append(slices.Clip(changes), l.end...)
		l.end = nil
	}
	m := slices.Min(l.front)
	if m <= l.frontier && len(changes) == 0 {
		return nil
	}
	l.frontier = max(l.frontier, m)
	l.commits++
	return l.rec.Commit(ctx, l.worker, l.frontier, changes)
}

// commitCount is how many times the ledger called Commit.
func (l *ledger) commitCount() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.commits
}
