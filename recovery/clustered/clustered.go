// Package clustered is recovery for a flow that runs as several processes:
// each process finds the partitions it can open in its own directories, the
// processes agree on one owner per partition (spread evenly among the
// processes that can reach it), on the resume point, and route every
// snapshot row to its partition's owner. It never lets two processes write
// one partition.
package clustered

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
)

// Recovery implements core.ClusterRecovery over recovery partitions.
type Recovery struct {
	dirs []string
	opts recovery.Options
	mesh core.Mesh
	// initCount, if set, is the partition count to create on a first
	// start (InitPartitions); onCreate hears what this process created.
	initCount int
	onCreate  func(msg string)

	store   *recovery.Store
	count   recovery.PartitionCount
	owners  []int // partition index -> owning process
	mu      sync.Mutex
	pmin    []recovery.Epoch // per partition: committed frontier, as last heard
	pminC   chan struct{}
	risen   chan struct{} // closed and replaced when a pmin rises
	pending map[recovery.PartitionIndex]recovery.Epoch
	done    chan struct{} // closed by Close: announce ends
	stop    sync.Once
	running sync.WaitGroup // the announce goroutine
	failure error
	// begun is set once this process's partitions began: peers' commits may
	// come from then on (the handlers run on the mesh's goroutines).
	begun atomic.Bool
	// runCtx is the context Begin was given (the run's): peers' commits are
	// written under it, so a run that fails does not leave a handler
	// waiting on the store.
	runCtx context.Context
	// reads, if set (OnDemand), serves and routes state read on demand.
	reads *reads
}

var _ core.ClusterRecovery = (*Recovery)(nil)

// New makes a cluster recovery over the partitions in dirs.
func New(dirs []string, opts recovery.Options) *Recovery {
	return &Recovery{dirs: dirs, opts: opts}
}

// InitPartitions makes Begin create the flow's partitions when no process
// has any (a first start): the processes agree on one flow uid (process 0's
// proposal), and each creates its share, partition i on process i mod P
// (the share restore's --process-id/--processes lays down), spread over its
// directories. Every process must be given the same n; partitions that
// exist must be n (see recovery.PlanInit). onCreate, if set, is told what
// this process created.
func (r *Recovery) InitPartitions(n int, onCreate func(msg string)) {
	r.initCount, r.onCreate = n, onCreate
}

// Attach implements core.ClusterRecovery.
func (r *Recovery) Attach(m core.Mesh) {
	r.mesh = m
	m.Handle("rec.commit", r.onCommit)
	m.Handle("rec.pmin", r.onPmin)
}

// foundMsg is what each process says at start: the partitions it can
// open, the --init-partitions count it was given (0: none), and a flow uid
// it proposes for a first start.
type foundMsg struct {
	Parts    []found `json:"parts"`
	Init     int     `json:"init,omitempty"`
	Proposal string  `json:"proposal,omitempty"`
}

// findMine lists the partitions this process can open.
func (r *Recovery) findMine(ctx context.Context) ([]found, error) {
	self := r.mesh.Self()
	ps, err := recovery.FindDirs(ctx, r.dirs, true)
	if err != nil {
		return nil, fmt.Errorf("process %d: %w", self, err)
	}
	defer recovery.CloseAll(ps)
	var mine []found
	for _, p := range ps {
		v, err := recovery.ReadView(ctx, p.DB)
		if err != nil {
			return nil, fmt.Errorf("process %d: %s: %w", self, p.Path, err)
		}
		mine = append(mine, found{int(p.Index), int(p.Count), p.FlowUID, v.FlowName, p.Path, len(v.Executions) == 0 && !v.Pending})
	}
	return mine, nil
}

func decodeFound(all map[int][]byte, procs int) ([]foundMsg, error) {
	msgs := make([]foundMsg, procs)
	for p, b := range all {
		if p < 0 || p >= procs {
			return nil, fmt.Errorf("partition list from process %d of %d", p, procs)
		}
		if err := json.Unmarshal(b, &msgs[p]); err != nil {
			return nil, fmt.Errorf("partition list from process %d: %w", p, err)
		}
	}
	return msgs, nil
}

// initShare creates this process's share of the partitions when the flow
// has none (or a first start crashed while creating them), under the uid
// process 0 proposed. Every process computes the same plan from the same
// lists.
func (r *Recovery) initShare(ctx context.Context, msgs []foundMsg) (string, []int, error) {
	self, procs := r.mesh.Self(), len(msgs)
	var every []recovery.Found
	for _, m := range msgs {
		for _, f := range m.Parts {
			every = append(every, recovery.Found{Index: recovery.PartitionIndex(f.Index), Count: recovery.PartitionCount(f.Count), FlowUID: f.UID, Fresh: f.Fresh})
		}
	}
	if msgs[0].Proposal == "" {
		return "", nil, fmt.Errorf("process 0 proposed no flow uid")
	}
	uid, create, err := recovery.PlanInit(every, recovery.PartitionCount(r.initCount), msgs[0].Proposal)
	if err != nil {
		return "", nil, fmt.Errorf("process %d: %w", self, err)
	}
	// Partition i is created by process i mod P, in its directories in turn.
	byDir := map[string][]recovery.PartitionIndex{}
	var mine []int
	for _, i := range create {
		if int(i)%procs != self {
			continue
		}
		d := r.dirs[(int(i)/procs)%len(r.dirs)]
		byDir[d] = append(byDir[d], i)
		mine = append(mine, int(i))
	}
	for _, d := range r.dirs {
		if len(byDir[d]) > 0 {
			if err := recovery.CreatePartitions(ctx, d, uid, recovery.PartitionCount(r.initCount), byDir[d]); err != nil {
				return "", nil, fmt.Errorf("process %d: %w", self, err)
			}
		}
	}
	return uid, mine, nil
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

// found is what one process can open.
type found struct {
	Index    int    `json:"index"`
	Count    int    `json:"count"`
	UID      string `json:"uid"`
	FlowName string `json:"flow_name"`
	Path     string `json:"path"`
	Fresh    bool   `json:"fresh,omitempty"`
}

// Begin implements core.Recovery: every process gathers what the others can
// reach, computes the same owners and the same resume point from the same
// data, and begins its own partitions.
func (r *Recovery) Begin(ctx context.Context, workers int) (core.RunInfo, error) {
	self := r.mesh.Self()
	mine, err := r.findMine(ctx)
	if err != nil {
		return core.RunInfo{}, err
	}
	// The proposal rides along every start: only a first start uses it.
	payload, _ := json.Marshal(foundMsg{Parts: mine, Init: r.initCount, Proposal: recovery.NewFlowUID()})
	all, err := r.mesh.Gather(ctx, "rec.found", payload)
	if err != nil {
		return core.RunInfo{}, err
	}
	msgs, err := decodeFound(all, r.mesh.Processes())
	if err != nil {
		return core.RunInfo{}, err
	}
	// Every process takes the same path (the same gathers), or none
	// starts: --init-partitions must be the same everywhere.
	for p, m := range msgs {
		if m.Init != msgs[0].Init {
			return core.RunInfo{}, fmt.Errorf("process 0 was started with --init-partitions %d and process %d with %d: give every process the same count (or none)", msgs[0].Init, p, m.Init)
		}
	}
	if msgs[0].Init > 0 {
		uid, created, err := r.initShare(ctx, msgs)
		if err != nil {
			return core.RunInfo{}, err
		}
		// Every process says what it holds now, created or not, so all
		// assign owners from the same lists.
		if mine, err = r.findMine(ctx); err != nil {
			return core.RunInfo{}, err
		}
		payload, _ = json.Marshal(foundMsg{Parts: mine, Init: r.initCount})
		if all, err = r.mesh.Gather(ctx, "rec.found.init", payload); err != nil {
			return core.RunInfo{}, err
		}
		if msgs, err = decodeFound(all, r.mesh.Processes()); err != nil {
			return core.RunInfo{}, err
		}
		if len(created) > 0 && r.onCreate != nil {
			r.onCreate(fmt.Sprintf("process %d: created recovery partitions %s of %d (flow %s) in %s", self,
				joinInts(created), r.initCount, uid, strings.Join(r.dirs, ", ")))
		}
	}
	reach := map[int][]found{}
	for p, m := range msgs {
		reach[p] = m.Parts
	}
	owners, count, err := assign(reach, r.mesh.Processes(), r.opts.FlowName, strings.Join(r.dirs, ","))
	if err != nil {
		return core.RunInfo{}, err
	}
	r.owners, r.count = owners, recovery.PartitionCount(count)
	var owned []*recovery.Partition
	for _, f := range reach[self] {
		if owners[f.Index] != self {
			continue
		}
		p, err := recovery.OpenPartition(ctx, f.Path, false)
		if err == nil && p == nil {
			err = fmt.Errorf("%s is no longer a partition", f.Path)
		}
		if err != nil {
			recovery.CloseAll(owned)
			return core.RunInfo{}, fmt.Errorf("process %d: %w", self, err)
		}
		owned = append(owned, p)
	}
	r.mu.Lock()
	r.pmin = make([]recovery.Epoch, count)
	r.mu.Unlock()
	r.pminC = make(chan struct{}, 1)
	r.risen = make(chan struct{})
	r.done = make(chan struct{})
	opts := r.opts
	opts.Global = r.global
	opts.OnCommitted = r.committed
	if r.reads != nil {
		opts.OnApplied = r.applied
	}
	r.store = recovery.NewStore(owned, r.count, opts)
	views, err := r.store.Views(ctx)
	if err != nil {
		r.store.Close()
		return core.RunInfo{}, err
	}
	// Each process adds a random nonce: a new lineage's id is derived from
	// all of them, so every process names it alike and no other cluster
	// (one started from copies of these files) can.
	vb, _ := json.Marshal(viewsMsg{Views: views, Nonce: recovery.NewLineageID()})
	allViews, err := r.mesh.Gather(ctx, "rec.views", vb)
	if err != nil {
		r.store.Close()
		return core.RunInfo{}, err
	}
	var every []*recovery.View
	nonces := make([]string, len(allViews))
	for p, b := range allViews {
		var vm viewsMsg
		if err := json.Unmarshal(b, &vm); err != nil {
			r.store.Close()
			return core.RunInfo{}, fmt.Errorf("views from process %d: %w", p, err)
		}
		every = append(every, vm.Views...)
		nonces[p] = vm.Nonce
	}
	rp, err := recovery.Resume(every)
	if err != nil {
		r.store.Close()
		return core.RunInfo{}, err
	}
	ls, err := recovery.StartLineage(every, rp.Epoch, func() string { return derivedID(nonces) }, time.Now())
	if err != nil {
		r.store.Close()
		return core.RunInfo{}, err
	}
	r.store.UseLineage(ls)
	r.mu.Lock()
	for i := range r.pmin {
		r.pmin[i] = rp.Epoch
	}
	r.mu.Unlock()
	if err := r.store.BeginAt(ctx, rp, workers); err != nil {
		r.store.Close()
		return core.RunInfo{}, fmt.Errorf("process %d: %w", self, err)
	}
	r.runCtx = ctx
	r.begun.Store(true)
	r.running.Add(1)
	go r.announce(r.done)
	if err := r.mesh.Barrier(ctx, "rec.begun"); err != nil {
		return core.RunInfo{}, err
	}
	var uid string
	if ps := r.store.Partitions(); len(ps) > 0 {
		uid = ps[0].FlowUID
	}
	return core.RunInfo{Execution: int(rp.Execution), StartEpoch: rp.Epoch, Workers: workers, FlowUID: uid,
		Lineage: ls.Lineage.ID, LineageNote: ls.Note}, nil
}

// viewsMsg is what each process says at start: its partitions' views and a
// random nonce.
type viewsMsg struct {
	Views []*recovery.View `json:"views"`
	Nonce string           `json:"nonce"`
}

// derivedID is a new lineage's id, the same on every process: a hash of
// every process's nonce, in process order.
func derivedID(nonces []string) string {
	h := sha256.New()
	for _, n := range nonces {
		h.Write([]byte(n))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// assign checks that the processes together reach every partition of one
// flow, and gives each partition to one process that reaches it, spreading
// them evenly (the process with fewest so far; ties to the lower index).
func assign(reach map[int][]found, procs int, flowName, dirs string) ([]int, int, error) {
	count, uid := -1, ""
	where := map[int][]int{}
	for p := 0; p < procs; p++ {
		for _, f := range reach[p] {
			switch {
			case count < 0:
				count, uid = f.Count, f.UID
			case f.Count != count:
				return nil, 0, fmt.Errorf("%w: process %d has partition %d of %d, others of %d", recovery.ErrMixedPartitions, p, f.Index, f.Count, count)
			case f.UID != uid:
				return nil, 0, fmt.Errorf("%w: process %d has partition %d of flow %s, others of flow %s; keep one flow's partitions per directory", recovery.ErrForeignFlow, p, f.Index, f.UID, uid)
			}
			if f.FlowName != "" && flowName != "" && f.FlowName != flowName {
				return nil, 0, fmt.Errorf("%w: process %d's partition %d belongs to flow %q, not %q", recovery.ErrForeignFlow, p, f.Index, f.FlowName, flowName)
			}
			where[f.Index] = append(where[f.Index], p)
		}
	}
	if count < 0 {
		return nil, 0, fmt.Errorf("%w: no process found any in its recovery directory (%s on this one): start every process with the same `--init-partitions N` to create them (a first start), or restore a backup", recovery.ErrNoPartitions, dirs)
	}
	var missing []string
	for i := 0; i < count; i++ {
		if len(where[i]) == 0 {
			missing = append(missing, fmt.Sprint(i))
		}
	}
	if len(missing) > 0 {
		return nil, 0, fmt.Errorf("%w: no process can reach partitions %s of %d; put them in one process's recovery directory (or restore them from a backup) and start again",
			recovery.ErrMissingPartitions, strings.Join(missing, ", "), count)
	}
	owners := make([]int, count)
	load := make([]int, procs)
	// Partitions reachable by fewer processes choose first.
	order := make([]int, count)
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(where[order[a]]) < len(where[order[b]]) })
	for _, i := range order {
		best := -1
		for _, p := range where[i] {
			if best < 0 || load[p] < load[best] || (load[p] == load[best] && p < best) {
				best = p
			}
		}
		owners[i] = best
		load[best]++
	}
	return owners, count, nil
}

// Owners returns which process owns each partition (after Begin).
func (r *Recovery) Owners() []int { return r.owners }

// Load implements core.Recovery: this process scans the partitions it owns.
func (r *Recovery) Load(ctx context.Context, below core.Epoch, fn func([]core.Loaded) error) error {
	return r.store.Load(ctx, below, fn)
}

// Commit implements core.Recovery: rows go to their partition's owner,
// the frontier to every process that owns a partition.
func (r *Recovery) Commit(ctx context.Context, w core.WorkerIndex, frontier core.Epoch, changes []core.Change) error {
	r.mu.Lock()
	err := r.failure
	r.mu.Unlock()
	if err != nil {
		return err
	}
	byProc := map[int][]recovery.Row{}
	for p := range r.mesh.Processes() {
		if r.ownsAny(p) {
			byProc[p] = nil
		}
	}
	for _, c := range changes {
		p := r.owners[recovery.PartitionFor(c.Step, c.Key, r.count)]
		byProc[p] = append(byProc[p], c)
	}
	for p, rows := range byProc {
		if p == r.mesh.Self() {
			if err := r.store.Commit(ctx, w, frontier, rows); err != nil {
				return err
			}
			continue
		}
		if err := r.mesh.Send(ctx, p, "rec.commit", encodeCommit(int(w), uint64(frontier), rows)); err != nil {
			return fmt.Errorf("send worker %d's commit of frontier %d to process %d: %w", w, frontier, p, err)
		}
	}
	return nil
}

func (r *Recovery) ownsAny(p int) bool {
	for _, o := range r.owners {
		if o == p {
			return true
		}
	}
	return false
}

// onCommit writes rows a peer routed to this process's partitions. A
// malformed or early message is the peer's fault and fails the run through
// the mesh; a failed write is this process's, kept for Commit, WaitDurable
// and Close to return. The runtime stops the mesh's handlers before it
// closes the recovery; should a commit come later all the same, the
// closed store refuses it (recovery.ErrClosed) and that is the error kept.
func (r *Recovery) onCommit(from int, b []byte) error {
	if !r.begun.Load() {
		return fmt.Errorf("commit before this process began its partitions")
	}
	w, f, rows, err := decodeCommit(b)
	if err != nil {
		return err
	}
	if err := r.store.Commit(r.runCtx, recovery.WorkerIndex(w), recovery.Epoch(f), rows); err != nil {
		r.mu.Lock()
		if r.failure == nil {
			r.failure = fmt.Errorf("commit from process %d: %w", from, err)
		}
		r.mu.Unlock()
	}
	return nil
}

// committed is called by the store when one of this process's partitions
// commits a higher frontier; the others hear of it.
func (r *Recovery) committed(i recovery.PartitionIndex, f recovery.Epoch) {
	r.mu.Lock()
	if f > r.pmin[i] {
		r.pmin[i] = f
		r.riseLocked()
	}
	if r.pending == nil {
		r.pending = map[recovery.PartitionIndex]recovery.Epoch{}
	}
	r.pending[i] = f
	r.mu.Unlock()
	select {
	case r.pminC <- struct{}{}:
	default:
	}
}

// announce sends committed frontiers to the other processes, coalesced, so
// the store's writers never wait on the network.
func (r *Recovery) announce(done <-chan struct{}) {
	defer r.running.Done()
	for {
		select {
		case <-r.pminC:
		case <-done:
			return
		}
		r.mu.Lock()
		pending := r.pending
		r.pending = nil
		r.mu.Unlock()
		var b, written []byte
		for i, f := range pending {
			b = binary.AppendUvarint(b, uint64(i))
			b = binary.AppendUvarint(b, uint64(f))
		}
		if r.reads != nil && r.reads.toAnnounce.Swap(false) {
			written = r.writtenCounts()
		}
		for p := range r.mesh.Processes() {
			if p == r.mesh.Self() {
				continue
			}
			err := r.announceTo(done, p, "rec.pmin", b)
			if err == nil && written != nil {
				err = r.announceTo(done, p, "rec.written", written)
			}
			if err != nil {
				select {
				case <-done:
					return // closing: the peers are told otherwise
				default:
				}
				r.fail(fmt.Errorf("announce committed frontiers to process %d: %w", p, err))
				return
			}
		}
	}
}

// announceTo sends one announcement (none if empty) to process p.
func (r *Recovery) announceTo(done <-chan struct{}, p int, topic string, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	// A peer that takes longer than this to take a frame is gone (the
	// mesh says so too); Close ends the wait at once.
	ctx, cancel := context.WithTimeout(context.Background(), announceTimeout)
	defer cancel()
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return r.mesh.Send(ctx, p, topic, b)
}

// announceTimeout bounds one announcement to one peer.
const announceTimeout = 30 * time.Second

// fail records the first error of the clustered recovery and wakes the
// waiters.
func (r *Recovery) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failure == nil {
		r.failure = err
		r.riseLocked()
	}
}

// onPmin records the committed frontiers a peer announces.
func (r *Recovery) onPmin(_ int, b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pmin == nil {
		return fmt.Errorf("committed frontiers before this process began its partitions")
	}
	for len(b) > 0 {
		i, k := binary.Uvarint(b)
		if k <= 0 {
			return fmt.Errorf("malformed committed frontiers")
		}
		f, k2 := binary.Uvarint(b[k:])
		if k2 <= 0 {
			return fmt.Errorf("malformed committed frontiers")
		}
		if i >= uint64(len(r.pmin)) {
			return fmt.Errorf("committed frontier of partition %d of %d", i, len(r.pmin))
		}
		if recovery.Epoch(f) > r.pmin[i] {
			r.pmin[i] = recovery.Epoch(f)
			r.riseLocked()
		}
		b = b[k+k2:]
	}
	return nil
}

func (r *Recovery) riseLocked() {
	close(r.risen)
	r.risen = make(chan struct{})
}

// WaitDurable implements core.Recovery: it waits until every partition of
// the flow, wherever it is, has committed frontier.
func (r *Recovery) WaitDurable(ctx context.Context, frontier core.Epoch) error {
	for {
		r.mu.Lock()
		g := recovery.Epoch(1<<63 - 1)
		for _, f := range r.pmin {
			g = min(g, f)
		}
		err, ch := r.failure, r.risen
		r.mu.Unlock()
		if err == nil && r.store != nil {
			err = r.store.Err()
		}
		if err != nil {
			return err
		}
		if g >= recovery.Epoch(frontier) {
			return nil
		}
		var stored <-chan struct{}
		if r.store != nil {
			stored = r.store.Changed() // closed when the store fails, too
		}
		select {
		case <-ch:
		case <-stored:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Durable is the frontier committed in every partition of the flow, as
// this process last heard: every epoch below it is durable.
func (r *Recovery) Durable() core.Epoch {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pmin) == 0 {
		return 0
	}
	return core.Epoch(slices.Min(r.pmin))
}

// global is the frontier committed in every partition of the flow.
func (r *Recovery) global() recovery.Epoch {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := recovery.Epoch(1<<63 - 1)
	for _, f := range r.pmin {
		g = min(g, f)
	}
	return g
}

// Close implements core.Recovery; it is safe before (or after a failed)
// Begin.
func (r *Recovery) Close() error { return r.Shutdown(context.Background()) }

// Shutdown is Close bounded by ctx (see recovery.Store.Shutdown).
func (r *Recovery) Shutdown(ctx context.Context) error {
	r.stop.Do(func() {
		if r.done != nil {
			close(r.done)
		}
	})
	stopped := make(chan struct{})
	go func() { r.running.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		return fmt.Errorf("%w: the announcements still run: %w", recovery.ErrShutdownTimeout, context.Cause(ctx))
	}
	if r.reads != nil {
		if err := r.reads.stopServing(ctx); err != nil {
			return err
		}
	}
	var err error
	if r.store != nil {
		err = r.store.Shutdown(ctx)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failure != nil {
		return r.failure
	}
	return err
}

func encodeCommit(w int, f uint64, rows []recovery.Row) []byte {
	b := binary.AppendUvarint(nil, uint64(w))
	b = binary.AppendUvarint(b, f)
	for _, r := range rows {
		b = appendBytes(b, []byte(r.Step))
		b = appendBytes(b, []byte(r.Key))
		b = binary.AppendUvarint(b, uint64(r.Epoch))
		if r.Value == nil {
			b = append(b, 0)
		} else {
			b = append(b, 1)
			b = appendBytes(b, r.Value)
		}
	}
	return b
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func decodeCommit(b []byte) (int, uint64, []recovery.Row, error) {
	bad := fmt.Errorf("malformed commit")
	w, k := binary.Uvarint(b)
	if k <= 0 {
		return 0, 0, nil, bad
	}
	b = b[k:]
	f, k := binary.Uvarint(b)
	if k <= 0 || w >= 1<<31 || f >= 1<<62 {
		return 0, 0, nil, bad
	}
	b = b[k:]
	var rows []recovery.Row
	for len(b) > 0 {
		step, rest, ok := cutBytes(b)
		if !ok {
			return 0, 0, nil, bad
		}
		key, rest, ok := cutBytes(rest)
		if !ok {
			return 0, 0, nil, bad
		}
		e, k := binary.Uvarint(rest)
		if k <= 0 || k == len(rest) {
			return 0, 0, nil, bad
		}
		flag := rest[k]
		rest = rest[k+1:]
		row := recovery.Row{Step: recovery.StepID(step), Key: recovery.StateKey(key), Epoch: recovery.Epoch(e)}
		if flag == 1 {
			v, after, ok := cutBytes(rest)
			if !ok {
				return 0, 0, nil, bad
			}
			// A copy: a zero-length value stays a (non-nil) value, and
			// no row aliases the frame.
			row.Value, rest = slices.Clone(v), after
		}
		rows = append(rows, row)
		b = rest
	}
	return int(w), f, rows, nil
}
