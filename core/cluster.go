package core

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowkeep/flowkeep/internal/mesh"
)

// Mesh connects the processes of a cluster (package internal/mesh is the
// transport). Recoveries that span processes use it through this
// interface.
//
// Contract: Send is ordered per (sender, receiver) pair and blocks while the
// connection's bounded queue is full. A topic's handler runs on a goroutine
// of the topic's own, one message at a time in arrival order (so per sender
// and topic in the order sent), off the connection's reader: a handler that
// blocks holds up its topic, not the peer's other messages. Handlers may
// block only on local resources (never on another message). A handler
// checks everything a peer sent (indexes, lengths, and that the message is
// expected now) and returns an error rather than act on a bad message, or
// panic: the error fails the run, naming the peer. Barrier returns once
// every process reached the barrier of that name, which also means every
// message sent before it by any process to this one has been handled.
type Mesh interface {
	Self() int
	Processes() int
	Send(ctx context.Context, to int, topic string, payload []byte) error
	Handle(topic string, fn func(from int, payload []byte) error)
	Barrier(ctx context.Context, name string) error
	// Gather sends payload to every other process under topic and returns
	// every process's payload for that topic (this one's included), once all
	// arrived. Each topic is gathered once per run.
	Gather(ctx context.Context, topic string, payload []byte) (map[int][]byte, error)
}

var _ Mesh = (*mesh.Mesh)(nil)

// ClusterConfig makes a run one process of a cluster.
type ClusterConfig struct {
	// ProcessID is this process's index into Addresses.
	ProcessID int
	// Addresses are host:port of every process, in process order; this
	// process listens on its own.
	Addresses []string
	// ConnectTimeout bounds the wait for all peers (default 60s).
	ConnectTimeout time.Duration
	// Listen is the address to listen on (default: this process's entry
	// of Addresses), e.g. ":7400" behind NAT or a Kubernetes Service.
	Listen string
	// OnWaiting, if set, is told every few seconds while peers are
	// missing at start-up, which ones and why.
	OnWaiting func(msg string)
	// Secret, if set, must be the same on every process: each connection
	// proves both ends hold it, a stranger is refused, and every frame
	// after that is authenticated and encrypted with keys derived from it
	// (unless TLS is set, which protects the frames itself).
	Secret []byte
	// TLS, if set, runs the connections over mutually authenticated TLS:
	// Certificates is this process's, RootCAs and ClientCAs the CA of its
	// peers (ClientAuth is set to require and verify theirs).
	TLS *tls.Config
}

// ClusterRecovery is a Recovery that spans the processes of a cluster.
type ClusterRecovery interface {
	Recovery
	// Attach is called before Begin with the cluster's mesh.
	Attach(m Mesh)
}

// The phases of a cluster run, as its frame handlers see them.
const (
	phaseJoined  = iota // connected; exchanges not set up: no data or credit may come
	phaseLoading        // exchanges set up; snapshot rows from peers may come
	phaseRunning        // exchanges set up; loading is over (or there was none)
)

// remoteCredits is how many messages may be in flight per (source process,
// step, destination worker).
const remoteCredits = 16

// clusterState is the runtime's share of a cluster run.
type clusterState struct {
	nodeIdx map[*node]uint16
	wires   map[*node]wireCodec
	rinbox  map[*node][]chan msg      // by global worker; this process's workers only
	credits map[*node][]chan struct{} // by global worker; other processes' workers only
	// senderProc is, per exchanged step, the process of each sending
	// segment: a peer may only send as its own segments.
	senderProc map[*node][]int

	// phase says which frames may arrive now (the handlers run on the
	// mesh's reader goroutines; the fields above are written before phase
	// moves past phaseJoined and only read after). phaseMu is held for
	// writing to leave phaseLoading, and for reading while rows are applied.
	phase   atomic.Int32
	phaseMu sync.RWMutex

	loadMu  sync.Mutex
	loadBuf map[int][]byte // rows bound for each process
}

func (x *execution) isLocal(w int) bool { return w/x.local == x.proc }
func (x *execution) ownerOf(w int) int  { return w / x.local }

// joinCluster connects to the other processes and hands the mesh to the
// recovery, which must span processes too.
func (x *execution) joinCluster() error {
	ids := x.flow.StepIDs()
	steps := make([]string, len(ids))
	for i, id := range ids {
		steps[i] = string(id)
	}
	// Every process must take the same path through the start (the same
	// gathers): with recovery or without, state bounded or not.
	ident := fmt.Sprintf("flowkeep/1 %s w=%d p=%d recovery=%v bounded=%v steps=%s", x.flow.name, x.local, x.procs, x.rec != nil, x.cfg.StateMemory > 0, strings.Join(steps, ","))
	c := x.cfg.Cluster
	var tc *tls.Config
	if c.TLS != nil {
		tc = c.TLS.Clone()
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		tc.MinVersion = max(tc.MinVersion, tls.VersionTLS12)
	}
	m, err := mesh.Dial(x.ctx, mesh.Config{Self: c.ProcessID, Addresses: c.Addresses, ConnectTimeout: c.ConnectTimeout, Listen: c.Listen, Waiting: c.OnWaiting, Secret: c.Secret, TLS: tc}, ident, func(err error) { x.cancel(err) })
	if err != nil {
		return err
	}
	x.attachMesh(m)
	if x.rec != nil {
		cr, ok := x.rec.(ClusterRecovery)
		if !ok {
			err := fmt.Errorf("this recovery cannot be used by a cluster")
			return errors.Join(err, x.closeMesh(fmt.Errorf("recovery does not span processes")))
		}
		cr.Attach(m)
	}
	return nil
}

// meshCloseTimeout bounds each of the runtime's waits for the mesh to stop:
// its handler calls in flight, the peers' goodbyes.
const meshCloseTimeout = 10 * time.Second

// stopMeshHandlers stops the mesh's handlers and waits for their calls in
// flight, so that nothing a peer sends acts on what the teardown closes
// next (recovery). Like closeMesh, it waits on a context of its own.
func (x *execution) stopMeshHandlers() error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(x.ctx), meshCloseTimeout)
	defer cancel()
	return x.mesh.StopHandlers(ctx)
}

// closeMesh closes the mesh, telling the peers cause (nil: a clean end).
// It runs when the run's context may have ended already, so it waits on a
// context of its own.
func (x *execution) closeMesh(cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(x.ctx), meshCloseTimeout)
	defer cancel()
	return x.mesh.Close(ctx, cause)
}

// attachMesh makes m this execution's mesh and registers the runtime's
// handlers on it.
func (x *execution) attachMesh(m *mesh.Mesh) {
	x.mesh = m
	x.cl.nodeIdx = map[*node]uint16{}
	x.cl.wires = map[*node]wireCodec{}
	for i, n := range x.flow.nodes {
		x.cl.nodeIdx[n] = uint16(i)
		if n.kind == kindExchanged {
			x.cl.wires[n] = n.exchanged.wire()
		}
	}
	m.HandleData(x.onData)
	m.HandleCredit(x.onCredit)
	m.Handle("load.rows", x.onLoadRows)
}

// setupClusterExchanges makes the remote inboxes of this process's workers
// and the credit windows towards other processes' workers.
func (x *execution) setupClusterExchanges() {
	x.cl.rinbox = map[*node][]chan msg{}
	x.cl.credits = map[*node][]chan struct{}{}
	x.cl.senderProc = map[*node][]int{}
	for _, n := range x.flow.nodes {
		if n.kind != kindExchanged {
			continue
		}
		rin := make([]chan msg, x.workers)
		cr := make([]chan struct{}, x.workers)
		for w := 0; w < x.workers; w++ {
			if x.isLocal(w) {
				// Every message from another process holds a credit, so
				// the reader never blocks on this channel.
				rin[w] = make(chan msg, (x.procs-1)*remoteCredits)
				continue
			}
			cr[w] = make(chan struct{}, remoteCredits)
			for i := 0; i < remoteCredits; i++ {
				cr[w] <- struct{}{}
			}
		}
		x.cl.rinbox[n], x.cl.credits[n] = rin, cr
	}
}

// sendRemote sends a batch (or marker) to worker d of another process,
// once that worker's window has room.
func (x *execution) sendRemote(n *node, d int, m msg, batch any) error {
	select {
	case <-x.cl.credits[n][d]:
	case <-x.ctx.Done():
		return context.Cause(x.ctx)
	}
	frame := make([]byte, mesh.DataHeaderLen, mesh.DataHeaderLen+16<<10)
	if batch != nil {
		var err error
		if frame, err = x.cl.wires[n].encode(frame, batch); err != nil {
			return err
		}
	}
	h := mesh.DataHeader{Node: x.cl.nodeIdx[n], Dst: uint32(d), From: m.from, Kind: uint8(m.kind), Epoch: uint64(m.epoch)}
	return x.mesh.SendData(x.ctx, x.ownerOf(d), h, frame)
}

// onData receives a batch or marker from another process (reader goroutine).
func (x *execution) onData(from int, h mesh.DataHeader, payload []byte) error {
	nodeIdx, dst := h.Node, h.Dst
	m := msg{kind: msgKind(h.Kind), from: h.From, epoch: Epoch(h.Epoch)}
	if int(nodeIdx) >= len(x.flow.nodes) {
		return fmt.Errorf("data for step %d of %d", nodeIdx, len(x.flow.nodes))
	}
	n := x.flow.nodes[nodeIdx]
	if n.kind != kindExchanged {
		return fmt.Errorf("data for %s, which is not an exchange", n.id)
	}
	if int(dst) >= x.workers || !x.isLocal(int(dst)) {
		return fmt.Errorf("data for %s worker %d, which is not this process's", n.id, dst)
	}
	if x.cl.phase.Load() == phaseJoined {
		return fmt.Errorf("data for %s worker %d before this process was ready", n.id, dst)
	}
	if m.kind > msgEOF {
		return fmt.Errorf("data frame for %s of unknown kind %d", n.id, m.kind)
	}
	if procs := x.cl.senderProc[n]; m.from < 0 || int(m.from) >= len(procs) || procs[m.from] != from {
		return fmt.Errorf("data for %s from sender %d, which is not process %d's", n.id, m.from, from)
	}
	if m.kind == msgData {
		b, err := x.cl.wires[n].decode(payload)
		if err != nil {
			return err
		}
		m.batch = b
	}
	m.origin = int32(from) + 1
	select {
	case x.cl.rinbox[n][dst] <- m:
		return nil
	default:
		return fmt.Errorf("process %d sent more than its window to %s worker %d", from, n.id, dst)
	}
}

// onCredit takes back credits that process from returns for its worker
// dst's window (reader goroutine).
func (x *execution) onCredit(from int, nodeIdx uint16, dst uint32, k uint32) error {
	if int(nodeIdx) >= len(x.flow.nodes) {
		return fmt.Errorf("credit for step %d of %d", nodeIdx, len(x.flow.nodes))
	}
	n := x.flow.nodes[nodeIdx]
	if n.kind != kindExchanged {
		return fmt.Errorf("credit for %s, which is not an exchange", n.id)
	}
	if int(dst) >= x.workers || x.isLocal(int(dst)) || x.ownerOf(int(dst)) != from {
		return fmt.Errorf("credit for %s worker %d, which is not process %d's", n.id, dst, from)
	}
	if x.cl.phase.Load() == phaseJoined {
		return fmt.Errorf("credit for %s worker %d before this process was ready", n.id, dst)
	}
	cr := x.cl.credits[n]
	if k > remoteCredits {
		return fmt.Errorf("%d credits for %s worker %d, more than its window of %d", k, n.id, dst, remoteCredits)
	}
	for i := uint32(0); i < k; i++ {
		select {
		case cr[dst] <- struct{}{}:
		default: // the window is full
		}
	}
	return nil
}

// creditReturn gives processed remote messages' credits back in batches.
type creditReturn struct {
	x    *execution
	node uint16
	dst  uint32
	owed map[int]uint32
}

func (c *creditReturn) add(origin int32) error {
	if origin == 0 {
		return nil
	}
	p := int(origin - 1)
	c.owed[p]++
	if c.owed[p] >= remoteCredits/2 {
		n := c.owed[p]
		c.owed[p] = 0
		if err := c.x.mesh.SendCredit(c.x.ctx, p, c.node, c.dst, n); err != nil {
			return fmt.Errorf("return %d credits to process %d: %w", n, p, err)
		}
	}
	return nil
}

// partitionsDigest summarises every input's partition list: every process
// must see the same ones.
func (x *execution) partitionsDigest(parts map[*node][]string) []byte {
	h := sha256.New()
	for _, in := range x.flow.inputs {
		h.Write([]byte(in.id))
		for _, p := range parts[in] {
			h.Write([]byte{0})
			h.Write([]byte(p))
		}
		h.Write([]byte{1})
	}
	return []byte(hex.EncodeToString(h.Sum(nil))[:16])
}

func (x *execution) checkSamePartitions(parts map[*node][]string) error {
	mine := x.partitionsDigest(parts)
	all, err := x.mesh.Gather(x.ctx, "partitions", mine)
	if err != nil {
		return err
	}
	for p, d := range all {
		if string(d) != string(mine) {
			return fmt.Errorf("process %d sees other input partitions than process %d (files differ between machines?): every process must list the same inputs", p, x.proc)
		}
	}
	return nil
}

// clock messages between the coordinator (process 0) and the others.
func (x *execution) setupClusterClock() {
	c := x.clock
	if x.proc == 0 {
		// The clock calls these from its own goroutines, which have no
		// error to return: a failed send fails the run.
		c.hook = func(e Epoch, final bool) {
			b := binary.AppendUvarint(nil, uint64(e))
			if final {
				b = append(b, 1)
			}
			if err := x.mesh.Broadcast(x.ctx, "clock", b); err != nil {
				x.cancel(fmt.Errorf("send epoch %d (final: %v) to the other processes: %w", e, final, err))
			}
		}
		x.mesh.Handle("clock.done", func(from int, b []byte) error {
			if len(b) != 0 {
				return fmt.Errorf("malformed end of partition")
			}
			if !c.ended() {
				return fmt.Errorf("process %d ended a partition after every partition had ended", from)
			}
			return nil
		})
		return
	}
	c.follower = true
	c.forward = func() {
		if err := x.mesh.Send(x.ctx, 0, "clock.done", nil); err != nil {
			x.cancel(fmt.Errorf("tell process 0 that a source partition ended: %w", err))
		}
	}
	x.mesh.Handle("clock", func(from int, b []byte) error {
		if from != 0 {
			return fmt.Errorf("clock from process %d: only process 0 leads it", from)
		}
		e, k := binary.Uvarint(b)
		if k <= 0 || len(b) > k+1 || len(b) == k+1 && b[k] != 1 {
			return fmt.Errorf("malformed clock message")
		}
		c.set(Epoch(e), len(b) == k+1)
		return nil
	})
}

// routeLoaded sends a loaded row to the process whose worker owns it (in
// batches: a row may wait in this process's buffer until flushLoaded).
func (x *execution) routeLoaded(to int, r Loaded) error {
	x.cl.loadMu.Lock()
	defer x.cl.loadMu.Unlock()
	b := x.cl.loadBuf[to]
	b = appendStr(b, string(r.Step))
	b = appendStr(b, string(r.Key))
	b = binary.AppendUvarint(b, uint64(r.Epoch))
	b = appendStr(b, string(r.Value))
	x.cl.loadBuf[to] = b
	if len(b) > 1<<20 {
		x.cl.loadBuf[to] = nil
		if err := x.mesh.Send(x.ctx, to, "load.rows", b); err != nil {
			return fmt.Errorf("send snapshot rows to process %d: %w", to, err)
		}
	}
	return nil
}

func (x *execution) flushLoaded() error {
	x.cl.loadMu.Lock()
	defer x.cl.loadMu.Unlock()
	for to, b := range x.cl.loadBuf {
		if len(b) > 0 {
			if err := x.mesh.Send(x.ctx, to, "load.rows", b); err != nil {
				return fmt.Errorf("send snapshot rows to process %d: %w", to, err)
			}
		}
	}
	x.cl.loadBuf = nil
	return nil
}

func (x *execution) onLoadRows(from int, b []byte) error {
	x.cl.phaseMu.RLock()
	defer x.cl.phaseMu.RUnlock()
	switch x.cl.phase.Load() {
	case phaseJoined:
		return fmt.Errorf("snapshot rows arrived before this process was ready")
	case phaseRunning:
		return fmt.Errorf("snapshot rows arrived after this process loaded its snapshot (or it loads none)")
	}
	var rows []Loaded
	for len(b) > 0 {
		var step, key, value string
		var err error
		var e uint64
		if step, b, err = readStr(b); err == nil {
			if key, b, err = readStr(b); err == nil {
				var k int
				if e, k = binary.Uvarint(b); k <= 0 {
					err = errWire
				} else if value, b, err = readStr(b[k:]); err == nil {
					rows = append(rows, Loaded{Step: StepID(step), Key: StateKey(key), Epoch: Epoch(e), Value: []byte(value)})
				}
			}
		}
		if err != nil {
			return fmt.Errorf("snapshot rows: %w", err)
		}
	}
	if err := x.applyLoaded(rows, false); err != nil {
		return fmt.Errorf("snapshot rows: %w", err)
	}
	return nil
}

func parseEnd(value []byte) (Epoch, error) {
	e, err := strconv.ParseUint(string(value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("runtime row: %q", value)
	}
	return Epoch(e), nil
}
