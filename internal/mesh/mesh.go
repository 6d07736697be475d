// Package mesh is the transport between the processes of a flowkeep
// cluster: one TCP connection per pair of processes, carrying
// length-prefixed frames in order.
//
// # Contract
//
//   - Dial connects process Self to every other process of Addresses: lower
//     indexes dial higher ones, and every connection starts with a hello that
//     names the process and the run's identity string, which must match on
//     both ends. With a Secret, both ends then prove they hold it (HMAC-SHA256
//     over both hellos and their random nonces, so a recorded handshake
//     cannot be replayed); with TLS, the connection is TLS with certificates
//     checked both ways. An inbound connection that fails the handshake is
//     refused and the wait goes on (a stranger cannot take a peer's place or
//     stop the start); the reason is in the error if the wait times out.
//     Dial returns once every peer answered, or fails.
//   - What is protected after the handshake. With a Secret (and no TLS),
//     every frame in both directions is sealed (seal.go): AES-256-GCM under
//     a key of its own per connection and direction, derived with HKDF from
//     the secret and both hellos, with the frame's sequence number in its
//     direction as the nonce. A frame that someone between the processes
//     injected, changed, replayed or moved, and the first frame after one
//     they dropped, fails authentication: it is not acted on, the
//     connection is closed and the run fails with an error naming the peer
//     that wraps ErrFrameAuth. The frames' contents are also encrypted (the
//     hellos are not). Not protected: that frames keep flowing (a relay can
//     stall or cut a connection, which fails the run as a lost peer does),
//     and their sizes and timing. With TLS, TLS protects every frame and no
//     second layer is added. With neither, nothing is: anyone who can reach
//     the processes, or sit between them, can join, read and inject frames.
//   - Frames from a peer are bounded (maxFrame plus the seal's tag, and
//     64 KiB during the handshake) and are allocated as their bytes arrive,
//     so a frame whose length was forged costs at most that before its
//     authentication fails.
//   - Send is ordered per (sender, receiver) pair and blocks while the
//     connection's bounded queue is full.
//   - Topic handlers (Handle) run off the connection's reader: each topic
//     has a queue and a goroutine of its own that calls the handler one
//     message at a time, in arrival order, so the messages of one topic
//     from one sender are handled in the order sent (messages of different
//     topics are not ordered with each other). A queue holds topicQueueLen
//     messages; when it is full the reader waits for room (backpressure,
//     nothing is dropped). So a handler that blocks holds up its own topic
//     only, and a connection only once that topic's queue is full.
//   - Data and credit handlers (HandleData, HandleCredit) run on the
//     connection's reader goroutine, in arrival order: they are the
//     flow-controlled hot path (the runtime's credits bound what may
//     arrive), so they must not block at all. A data or credit frame may be
//     handled before a topic message that came before it.
//   - Any handler may block only on local resources, never on another
//     message. Whatever a peer sends, neither the mesh nor a handler may
//     panic: a frame that is malformed, unknown, early (no handler yet) or
//     that a handler refuses (returns an error for) fails the run as a lost
//     peer does, naming the peer, and nothing that peer sends after it is
//     acted on.
//   - Barrier returns once every process reached the barrier of that name,
//     which also means every message sent before it by any process to this
//     one has been handled: a peer's barrier counts only once every topic
//     message it sent before the barrier was handled (the reader reads on
//     meanwhile). Gather is a barrier that also collects one payload from
//     each process.
//   - A peer that goes silent (no frame, not even a ping, for a while), drops
//     its connection or aborts makes the mesh call the fail function given to
//     Dial once, with an error naming the peer.
//   - Lifecycle. The mesh's work is tied to the context given to Dial: once
//     it ends, no handler call starts (frames are still read, and dropped,
//     so the peers are not stalled), and sends, barriers and gathers fail
//     with its cause; the caller still closes the mesh. StopHandlers stops
//     the handlers and waits for the calls in flight and the topics'
//     goroutines; sends go on working. Close refuses new sends, barriers
//     and gathers (ErrClosed; a send racing Close's start may be dropped
//     instead), stops the handlers and waits for them, says goodbye (or,
//     with a cause, tells the peers why this process stops), waits briefly
//     for the peers' goodbyes, then closes the connections and waits for
//     its goroutines. Every wait ends when Close's (or StopHandlers')
//     context does, so neither hangs on a stuck peer or handler.
//
// The mesh knows nothing of dataflows: data and credit frames carry an
// opaque header (DataHeader) and payload for the runtime's exchanges.
package mesh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config says where the processes of a cluster are.
type Config struct {
	// Self is this process's index into Addresses.
	Self int
	// Addresses are host:port of every process, in process order; this
	// process listens on its own.
	Addresses []string
	// ConnectTimeout bounds the wait for all peers (default 60s).
	ConnectTimeout time.Duration
	// Listen is the address to listen on (default: this process's entry of
	// Addresses), e.g. ":7400" behind NAT or a Kubernetes Service.
	Listen string
	// Waiting, if set, is told every few seconds while peers are missing,
	// which ones and why.
	Waiting func(msg string)
	// Secret, if set, is shared by every process of the cluster: a peer
	// must prove it holds it, and (without TLS) every frame after the
	// handshake is sealed with keys derived from it (see the package doc).
	Secret []byte
	// TLS, if set, runs every connection over TLS with this configuration
	// (own certificate, and the CA that signs the peers': RootCAs for
	// dialing, ClientCAs with RequireAndVerifyClientCert for accepting).
	TLS *tls.Config
}

// DataHeader is the fixed part of a data frame: which exchange (Node) and
// destination worker (Dst) it is for, the sending segment (From), and the
// runtime's message kind and epoch.
type DataHeader struct {
	Node  uint16
	Dst   uint32
	From  int32
	Kind  uint8
	Epoch uint64
}

const (
	frameHello  = 1
	frameTopic  = 2
	frameData   = 3
	frameCredit = 4
	framePing   = 5
	frameBye    = 6
	frameAbort  = 7
	frameAuth   = 8
)

// helloVersion is the handshake's version; a hello carries it and whether
// the sender requires the secret. Version 3 seals every frame after the
// handshake when there is a secret (and no TLS).
const helloVersion = 3

// waitReport is how often Dial's Waiting hears of missing peers (a
// variable for tests).
var waitReport = 5 * time.Second

const (
	maxFrame      = 64 << 20
	maxHelloFrame = 64 << 10
	helloTimeout  = 10 * time.Second // for one connection's handshake

	peerQueue   = 256
	pingEvery   = time.Second
	peerSilence = 15 * time.Second
)

type frame struct {
	typ byte
	b   []byte // payload after the type byte
}

// ErrClosed is wrapped by the errors of what the mesh refuses once it is
// closing (Close): sends, barriers and gathers; and of barriers, gathers
// and messages left unfinished because the handlers stopped.
var ErrClosed = errors.New("mesh closed")

// errHandlersStopped is why the handlers halted when StopHandlers or Close
// stopped them.
var errHandlersStopped = fmt.Errorf("handlers stopped: %w", ErrClosed)

// Mesh is this process's end of the cluster's connections.
type Mesh struct {
	self   int
	addrs  []string
	ident  string
	secret []byte
	tls    *tls.Config
	ln     net.Listener
	peers  []*peer

	mu       sync.Mutex
	topics   map[string]*topicQueue
	onData   func(from int, h DataHeader, payload []byte) error
	onCredit func(from int, node uint16, dst uint32, n uint32) error
	barriers map[string]map[int]bool
	gathered map[string]map[int][]byte
	barrierC chan struct{} // closed and replaced whenever a barrier or gather message is recorded

	// The handlers' lifecycle (handlers.go): once halted, no handler call
	// starts; calls counts the calls in flight and the topics' goroutines.
	life    sync.Mutex
	halted  bool
	haltErr error         // why: the Dial context's cause, or errHandlersStopped
	halt    chan struct{} // closed when halted
	calls   sync.WaitGroup

	// The mesh's lifecycle: ctx is the one given to Dial (stopCtx undoes
	// its hook that halts the handlers); shut is closed when Close begins,
	// down when the connections are closed.
	ctx       context.Context
	stopCtx   func() bool
	shut      chan struct{}
	down      chan struct{}
	downOnce  sync.Once
	closeOnce sync.Once
	closeErr  error

	failOnce sync.Once
	fail     func(error)
	closing  atomic.Bool
}

// newMesh is the mesh of process self of len(addrs), before it connects.
func newMesh(self int, addrs []string, fail func(error)) *Mesh {
	return &Mesh{self: self, addrs: addrs, peers: make([]*peer, len(addrs)), topics: map[string]*topicQueue{},
		barriers: map[string]map[int]bool{}, gathered: map[string]map[int][]byte{}, barrierC: make(chan struct{}),
		halt: make(chan struct{}), ctx: context.Background(), stopCtx: func() bool { return false },
		shut: make(chan struct{}), down: make(chan struct{}), fail: fail}
}

type peer struct {
	id     int
	conn   net.Conn
	out    chan frame
	bye    atomic.Bool
	done   chan struct{} // reader ended
	wdone  chan struct{} // writer ended
	closed atomic.Bool
	seal   *sealing // nil: frames travel as they are (no secret, or TLS)
	// refused is set once a handler refused one of the peer's messages:
	// nothing more from it is acted on.
	refused atomic.Bool
	in      inbox // its topic messages in the handlers' queues
}

// Self is this process's index.
func (m *Mesh) Self() int { return m.self }

// Processes is the number of processes in the cluster.
func (m *Mesh) Processes() int { return len(m.addrs) }

// Handle registers fn for messages of topic, replacing the topic's
// handler if it had one. fn runs on the topic's own goroutine, one message
// at a time in arrival order (see the package doc). An error from fn fails
// the run; a message of a topic without a handler does too.
func (m *Mesh) Handle(topic string, fn func(from int, payload []byte) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q := m.topics[topic]; q != nil {
		q.fn = fn
		return
	}
	q := &topicQueue{topic: topic, fn: fn, ch: make(chan topicItem, topicQueueLen)}
	m.topics[topic] = q
	if m.enter() {
		go m.runTopic(q)
	}
}

// HandleData registers fn for data frames, as Handle does for a topic.
// Until it is called a data frame fails the run.
func (m *Mesh) HandleData(fn func(from int, h DataHeader, payload []byte) error) {
	m.mu.Lock()
	m.onData = fn
	m.mu.Unlock()
}

// HandleCredit registers fn for credit frames, as Handle does for a topic.
// Until it is called a credit frame fails the run.
func (m *Mesh) HandleCredit(fn func(from int, node uint16, dst uint32, n uint32) error) {
	m.mu.Lock()
	m.onCredit = fn
	m.mu.Unlock()
}

func (m *Mesh) enqueue(ctx context.Context, to int, f frame) error {
	if to < 0 || to >= len(m.peers) || m.peers[to] == nil {
		return fmt.Errorf("no peer %d", to)
	}
	p := m.peers[to]
	if m.closing.Load() {
		return fmt.Errorf("send to process %d: %w", to, ErrClosed)
	}
	if m.ctx.Err() != nil {
		return fmt.Errorf("send to process %d: %w", to, context.Cause(m.ctx))
	}
	select {
	case p.out <- f:
		return nil
	case <-p.wdone:
		return fmt.Errorf("connection to process %d (%s) is closed", to, m.addrs[to])
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-m.shut:
		return fmt.Errorf("send to process %d: %w", to, ErrClosed)
	case <-m.ctx.Done():
		return fmt.Errorf("send to process %d: %w", to, context.Cause(m.ctx))
	}
}

// Send sends payload under topic to process to.
func (m *Mesh) Send(ctx context.Context, to int, topic string, payload []byte) error {
	if len(topic) > 255 {
		return fmt.Errorf("topic too long")
	}
	b := make([]byte, 0, 1+len(topic)+len(payload))
	b = append(b, byte(len(topic)))
	b = append(b, topic...)
	b = append(b, payload...)
	return m.enqueue(ctx, to, frame{frameTopic, b})
}

// Broadcast sends to every other process.
func (m *Mesh) Broadcast(ctx context.Context, topic string, payload []byte) error {
	for i := range m.addrs {
		if i != m.self {
			if err := m.Send(ctx, i, topic, payload); err != nil {
				return err
			}
		}
	}
	return nil
}

// Barrier waits until every process reached the barrier called name.
func (m *Mesh) Barrier(ctx context.Context, name string) error {
	if err := m.Broadcast(ctx, "$barrier", []byte(name)); err != nil {
		return err
	}
	for {
		m.mu.Lock()
		n := len(m.barriers[name])
		ch := m.barrierC
		m.mu.Unlock()
		if n == len(m.addrs)-1 {
			m.mu.Lock()
			delete(m.barriers, name)
			m.mu.Unlock()
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-m.halt:
			return fmt.Errorf("barrier %q: %w", name, m.haltCause())
		}
	}
}

// Gather sends payload to every other process under topic and returns
// every process's payload for that topic (this one's included), once all
// arrived. Each topic is gathered once per run.
func (m *Mesh) Gather(ctx context.Context, topic string, payload []byte) (map[int][]byte, error) {
	msg := append(append([]byte(topic), 0), payload...)
	if err := m.Broadcast(ctx, "$gather", msg); err != nil {
		return nil, err
	}
	for {
		m.mu.Lock()
		got := m.gathered[topic]
		n := len(got)
		ch := m.barrierC
		m.mu.Unlock()
		if n == len(m.addrs)-1 {
			out := map[int][]byte{m.self: payload}
			for k, v := range got {
				out[k] = v
			}
			return out, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-m.halt:
			return nil, fmt.Errorf("gather %q: %w", topic, m.haltCause())
		}
	}
}

// Dial connects this process to every other one (see the package doc).
// ident is the run's identity: every process must give the same. fail is
// called once when a peer is lost after Dial returned.
//
// Dial runs in phases: it listens, then an acceptor takes the lower
// processes' connections (acceptPeers) while a dialer per higher process
// connects to it (dialPeer), and the assembly (assemble) collects their
// connections until every peer is here or the wait fails.
func Dial(ctx context.Context, cfg Config, ident string, fail func(error)) (*Mesh, error) {
	n := len(cfg.Addresses)
	if cfg.Self < 0 || cfg.Self >= n {
		return nil, fmt.Errorf("process id %d is not an index into the %d addresses", cfg.Self, n)
	}
	timeout := cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	m := newMesh(cfg.Self, cfg.Addresses, fail)
	m.ident, m.secret, m.tls = ident, cfg.Secret, cfg.TLS
	life := ctx
	listen := cfg.Listen
	if listen == "" {
		listen = cfg.Addresses[cfg.Self]
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (process %d): %w", listen, cfg.Self, err)
	}
	if cfg.TLS != nil {
		ln = tls.NewListener(ln, cfg.TLS)
	}
	m.ln = ln
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	j := &joining{m: m, timeout: timeout, results: make(chan joined, n), why: map[int]string{}}
	go j.acceptPeers(ln)
	for to := m.self + 1; to < n; to++ {
		go j.dialPeer(ctx, to)
	}
	if err := j.assemble(ctx, cfg.Waiting); err != nil {
		m.closeNow()
		j.abandon()
		return nil, err
	}
	ln.Close() // every peer is here; nobody else may connect
	m.ctx = life
	m.stopCtx = context.AfterFunc(life, func() { m.haltHandlers(context.Cause(life)) })
	for _, p := range m.peers {
		if p != nil {
			go m.writeLoop(p)
			go m.readLoop(p)
		}
	}
	return m, nil
}

// joining is the state of Dial while the cluster forms: the connections
// the acceptor and the dialers made, and why each missing peer is missing.
type joining struct {
	m       *Mesh
	timeout time.Duration // ConnectTimeout: bounds one handshake too
	results chan joined   // from the acceptor and the dialers, to the assembly

	mu      sync.Mutex // guards why, refused, and m.peers while the cluster forms
	why     map[int]string
	refused string
}

// joined is a connection that passed its handshake with process id, or the
// error that ends the wait for the cluster.
type joined struct {
	id   int
	conn net.Conn
	seal *sealing
	err  error
}

// handshakeDeadline bounds one connection's handshake.
func (j *joining) handshakeDeadline() time.Time {
	return time.Now().Add(min(j.timeout, helloTimeout))
}

// acceptPeers is the acceptor: it takes the connections of the processes
// below this one until the listener is closed, runs each one's handshake
// and hands those that pass to the assembly. A connection that fails its
// handshake is refused, and why is kept for the wait's report.
func (j *joining) acceptPeers(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed (Dial is done) or broken: the wait times out
		}
		go func() {
			c.SetDeadline(j.handshakeDeadline())
			id, seal, err := j.m.accept(c)
			c.SetDeadline(time.Time{})
			if err != nil {
				c.Close()
				j.mu.Lock()
				j.refused = fmt.Sprintf("refused a connection from %s: %v", c.RemoteAddr(), err)
				j.mu.Unlock()
				return
			}
			select {
			case j.results <- joined{id, c, seal, nil}:
			default: // more peers than expected: Dial has failed
				c.Close()
			}
		}()
	}
}

// dialPeer is the dialer for process to (above this one): it connects and
// runs the handshake, again every 200ms while the peer is not there yet,
// until it succeeds, fails in a way no retry can fix, or ctx ends.
func (j *joining) dialPeer(ctx context.Context, to int) {
	addr := j.m.addrs[to]
	for {
		c, err := j.m.dialOnce(ctx, addr)
		if err == nil {
			c.SetDeadline(j.handshakeDeadline())
			var id int
			var seal *sealing
			id, seal, err = j.m.greet(c, to)
			c.SetDeadline(time.Time{})
			if err == nil {
				j.results <- joined{id, c, seal, nil}
				return
			}
			c.Close()
			if !retryable(err) {
				j.results <- joined{to, nil, nil, fmt.Errorf("process %d at %s: %w", to, addr, err)}
				return
			}
		}
		j.mu.Lock()
		j.why[to] = err.Error()
		j.mu.Unlock()
		select {
		case <-ctx.Done():
			return // the assembly reports it
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// missing describes the peers not connected yet and why.
func (j *joining) missing() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	m := j.m
	var parts []string
	for k := range m.addrs {
		if k == m.self || m.peers[k] != nil {
			continue
		}
		p := fmt.Sprintf("process %d (%s)", k, m.addrs[k])
		switch {
		case j.why[k] != "":
			p += ": " + j.why[k]
		case k < m.self:
			p += ": has not connected"
			if j.refused != "" {
				p += " (" + j.refused + ")"
			}
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// assemble is the assembly: it makes a peer of every connection the
// acceptor and the dialers hand over, until every other process is here.
// It fails at the first error they report, at a connection it did not
// expect, or when ctx ends (saying which peers are missing and why);
// waiting, if set, hears of the missing peers every waitReport meanwhile.
func (j *joining) assemble(ctx context.Context, waiting func(string)) error {
	m := j.m
	report := time.NewTicker(waitReport)
	defer report.Stop()
	for k := 0; k < len(m.addrs)-1; k++ {
		var r joined
	wait:
		for {
			select {
			case r = <-j.results:
				break wait
			case <-report.C:
				if waiting != nil {
					waiting("waiting for " + j.missing())
				}
			case <-ctx.Done():
				err := fmt.Errorf("the cluster did not form within %v: missing %s", j.timeout, j.missing())
				if ctx.Err() != context.DeadlineExceeded {
					err = context.Cause(ctx)
				}
				return err
			}
		}
		if r.err != nil {
			return r.err
		}
		if r.id < 0 || r.id >= len(m.addrs) || r.id == m.self || m.peers[r.id] != nil {
			r.conn.Close()
			return fmt.Errorf("unexpected connection from process %d", r.id)
		}
		j.mu.Lock()
		m.peers[r.id] = &peer{id: r.id, conn: r.conn, out: make(chan frame, peerQueue), done: make(chan struct{}), wdone: make(chan struct{}), seal: r.seal}
		j.mu.Unlock()
	}
	return nil
}

// abandon closes the connections that finished their handshake after the
// assembly failed.
func (j *joining) abandon() {
	for {
		select {
		case r := <-j.results:
			if r.conn != nil {
				r.conn.Close()
			}
		default:
			return
		}
	}
}

// retryable says whether a failed handshake with a peer may succeed on a
// new connection (the peer was still starting), or is a configuration
// mismatch to report at once.
func retryable(err error) bool {
	var cfgErr *mismatchError
	return !errors.As(err, &cfgErr)
}

// mismatchError is a handshake failure no retry can fix: the peers are set
// up differently (secret, identity, version).
type mismatchError struct{ msg string }

func (e *mismatchError) Error() string { return e.msg }

func mismatch(format string, args ...any) error { return &mismatchError{fmt.Sprintf(format, args...)} }

func (m *Mesh) dialOnce(ctx context.Context, addr string) (net.Conn, error) {
	if m.tls == nil {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	cfg := m.tls.Clone()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		cfg.ServerName = host
	}
	d := tls.Dialer{Config: cfg}
	return d.DialContext(ctx, "tcp", addr)
}

// hello is the first frame each end sends: its process id, a fresh nonce,
// whether it requires the secret, and the run's identity.
func (m *Mesh) hello() ([]byte, error) {
	b := []byte{frameHello, helloVersion, 0}
	if len(m.secret) > 0 {
		b[2] = 1
	}
	b = binary.AppendUvarint(b, uint64(m.self))
	var nonce [32]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	b = append(b, nonce[:]...)
	return append(b, m.ident...), nil
}

// parseHello checks a peer's hello against this process's and returns the
// peer's id.
func (m *Mesh) parseHello(b []byte) (int, error) {
	if len(b) < 3 || b[0] != frameHello {
		return -1, errors.New("not a flowrun peer")
	}
	if b[1] != helloVersion {
		return -1, mismatch("the peer speaks handshake version %d, this process %d: run the same flowrun version everywhere", b[1], helloVersion)
	}
	id, k := binary.Uvarint(b[3:])
	if k <= 0 || len(b) < 3+k+32 || id >= uint64(len(m.addrs)) {
		return -1, errors.New("malformed hello")
	}
	peerAuth, selfAuth := b[2] == 1, len(m.secret) > 0
	switch {
	case peerAuth && !selfAuth:
		return -1, mismatch("process %d requires a cluster secret and this one (%d) has none: give every process the same --cluster-secret", id, m.self)
	case !peerAuth && selfAuth:
		return -1, mismatch("process %d has no cluster secret and this one (%d) requires one: give every process the same --cluster-secret", id, m.self)
	}
	if got := string(b[3+k+32:]); got != m.ident {
		return -1, mismatch("process %d runs %q but this one (%d) runs %q: start every process with the same flow, -w and addresses, and -r and --state-memory on every process or none", id, got, m.self, m.ident)
	}
	return int(id), nil
}

// proof is this end's HMAC over both hellos, for role "dialer" or
// "acceptor" (so one end's proof cannot be reflected as the other's).
func (m *Mesh) proof(role string, dialerHello, acceptorHello []byte) []byte {
	h := hmac.New(sha256.New, m.secret)
	h.Write([]byte("flowkeep-mesh-v2 " + role + "\x00"))
	for _, b := range [][]byte{dialerHello, acceptorHello} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(b)))
		h.Write(l[:])
		h.Write(b)
	}
	return h.Sum(nil)
}

func (m *Mesh) checkProof(c net.Conn, role string, dh, ah []byte) error {
	b, err := readFrameMax(c, maxHelloFrame)
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if len(b) != 1+sha256.Size || b[0] != frameAuth {
		return errors.New("handshake: the peer did not authenticate")
	}
	if !hmac.Equal(b[1:], m.proof(role, dh, ah)) {
		return mismatch("authentication failed: the cluster secrets differ")
	}
	return nil
}

// greet is the dialing end's handshake with process want.
func (m *Mesh) greet(c net.Conn, want int) (int, *sealing, error) {
	dh, err := m.hello()
	if err != nil {
		return -1, nil, err
	}
	if err := writeFrame(c, dh); err != nil {
		return -1, nil, fmt.Errorf("handshake: %w", err)
	}
	// Unbuffered reads: the peer's first frames may follow the handshake
	// at once, and must be left in the connection for the reader.
	ah, err := readFrameMax(c, maxHelloFrame)
	if err != nil {
		return -1, nil, fmt.Errorf("handshake: %w", err)
	}
	id, err := m.parseHello(ah)
	if err != nil {
		return -1, nil, err
	}
	if id != want {
		return -1, nil, mismatch("answered as process %d: is --addresses the same, in the same order, on every process?", id)
	}
	if len(m.secret) > 0 {
		perr := m.checkProof(c, "acceptor", dh, ah)
		// Our proof goes out even when theirs failed, so that both ends
		// can say the secrets differ.
		if err := writeFrame(c, append([]byte{frameAuth}, m.proof("dialer", dh, ah)...)); err != nil && perr == nil {
			return -1, nil, fmt.Errorf("handshake: %w", err)
		}
		if perr != nil {
			return -1, nil, perr
		}
	}
	seal, err := m.sealingFor(dh, ah, true)
	if err != nil {
		return -1, nil, err
	}
	return id, seal, nil
}

// accept is the accepting end's handshake; only lower processes dial.
func (m *Mesh) accept(c net.Conn) (int, *sealing, error) {
	dh, err := readFrameMax(c, maxHelloFrame)
	if err != nil {
		return -1, nil, fmt.Errorf("handshake: %w", err)
	}
	id, err := m.parseHello(dh)
	if err != nil {
		var cfgErr *mismatchError
		if errors.As(err, &cfgErr) && len(m.secret) == 0 {
			// Set up differently: the dialer learns it from this end's
			// hello at once, rather than wait out its connect timeout.
			// (With a secret, no hello goes to a peer before it matches:
			// it would tell a stranger the run's identity.)
			if ah, herr := m.hello(); herr == nil {
				writeFrame(c, ah)
			}
		}
		return -1, nil, err
	}
	if id >= m.self {
		return -1, nil, fmt.Errorf("process %d dialed this one (%d); only lower processes do", id, m.self)
	}
	ah, err := m.hello()
	if err != nil {
		return -1, nil, err
	}
	if err := writeFrame(c, ah); err != nil {
		return -1, nil, fmt.Errorf("handshake: %w", err)
	}
	if len(m.secret) > 0 {
		if err := writeFrame(c, append([]byte{frameAuth}, m.proof("acceptor", dh, ah)...)); err != nil {
			return -1, nil, fmt.Errorf("handshake: %w", err)
		}
		if err := m.checkProof(c, "dialer", dh, ah); err != nil {
			return -1, nil, err
		}
	}
	seal, err := m.sealingFor(dh, ah, false)
	if err != nil {
		return -1, nil, err
	}
	return id, seal, nil
}

func writeFrame(w io.Writer, b []byte) error {
	var h [4]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(b)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// writeTyped writes a frame of a type byte and payload without copying them
// together.
func writeTyped(w *bufio.Writer, typ byte, b []byte) error {
	var h [5]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(b)+1))
	h[4] = typ
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// readFrameMax reads one frame of at most max bytes. Its buffer grows as
// the bytes arrive, so a peer that announces a large frame and sends
// little makes this process allocate little.
func readFrameMax(r io.Reader, max uint32) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n == 0 || n > max {
		return nil, fmt.Errorf("frame of %d bytes (at most %d)", n, max)
	}
	b := make([]byte, 0, min(n, 1<<20))
	for uint32(len(b)) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(int(n)-len(b), len(b)))
		}
		k, err := r.Read(b[len(b):min(cap(b), int(n))])
		b = b[:len(b)+k]
		if err != nil && uint32(len(b)) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return b, nil
}

func (m *Mesh) writeLoop(p *peer) {
	defer close(p.wdone)
	w := bufio.NewWriterSize(p.conn, 256<<10)
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		var f frame
		select {
		case f = <-p.out:
		case <-t.C:
			f = frame{typ: framePing}
		case <-m.down:
			return
		}
		var err error
		if p.seal != nil {
			err = p.seal.writeSealed(w, f.typ, f.b)
		} else {
			err = writeTyped(w, f.typ, f.b)
		}
		if err != nil {
			m.peerFailed(p, err)
			return
		}
		if len(p.out) == 0 {
			if err := w.Flush(); err != nil {
				m.peerFailed(p, err)
				return
			}
		}
		if f.typ == frameBye || f.typ == frameAbort {
			w.Flush()
			return
		}
	}
}

func (m *Mesh) peerFailed(p *peer, err error) {
	if m.closing.Load() || p.bye.Load() {
		return
	}
	m.failOnce.Do(func() {
		m.fail(fmt.Errorf("lost peer process %d (%s): %w", p.id, m.addrs[p.id], err))
	})
}

// forged fails the run because a frame from peer p failed authentication
// (it is not acted on) and ends the connection: nothing more is read from
// it, or sent on it.
func (m *Mesh) forged(p *peer, err error) {
	if !m.closing.Load() {
		m.failOnce.Do(func() {
			m.fail(fmt.Errorf("connection with process %d (%s): %w; the connection is closed", p.id, m.addrs[p.id], err))
		})
	}
	if p.closed.CompareAndSwap(false, true) {
		p.conn.Close()
	}
}

// rejected fails the run because peer p sent a frame this process must not
// act on.
func (m *Mesh) rejected(p *peer, err error) {
	if m.closing.Load() {
		return
	}
	m.failOnce.Do(func() {
		m.fail(fmt.Errorf("process %d (%s) sent a bad frame: %w", p.id, m.addrs[p.id], err))
	})
}

func (m *Mesh) readLoop(p *peer) {
	defer close(p.done)
	r := bufio.NewReaderSize(p.conn, 256<<10)
	limit := uint32(maxFrame)
	if p.seal != nil {
		limit += sealOverhead
	}
	for {
		p.conn.SetReadDeadline(time.Now().Add(peerSilence))
		b, err := readFrameMax(r, limit)
		if err != nil {
			if p.bye.Load() {
				return
			}
			m.peerFailed(p, err)
			return
		}
		if p.seal != nil {
			if b, err = p.seal.open(b); err != nil {
				m.forged(p, err)
				return
			}
		}
		if _, err := m.dispatch(p, b, false); err != nil {
			m.rejected(p, err)
			return
		}
		if p.bye.Load() || p.refused.Load() {
			return
		}
	}
}

// dispatch acts on one frame from peer p, or says why it must not: it
// never panics, whatever the frame holds. A topic message goes to its
// topic's queue (waiting while that is full); with await, the returned
// channel is told its handler's result. Data and credit frames are handed
// to their handlers here, on the reader.
func (m *Mesh) dispatch(p *peer, b []byte, await bool) (<-chan error, error) {
	if len(b) == 0 {
		return nil, errors.New("empty frame")
	}
	switch b[0] {
	case framePing:
	case frameBye:
		p.bye.Store(true)
	case frameAbort:
		p.bye.Store(true)
		m.failOnce.Do(func() { m.fail(fmt.Errorf("process %d (%s) failed: %s", p.id, m.addrs[p.id], b[1:])) })
	case frameTopic:
		if len(b) < 2 || int(b[1]) > len(b)-2 {
			return nil, errors.New("malformed frame")
		}
		n := 2 + int(b[1]) // not b[1]+2: that is a byte, and wraps
		topic := string(b[2:n])
		payload := b[n:]
		switch topic {
		case "$gather":
			name, data, ok := bytes.Cut(payload, []byte{0})
			if !ok {
				return nil, errors.New("malformed gather")
			}
			m.arrive(p, mark{gather: true, name: string(name), data: append([]byte(nil), data...)})
			return nil, nil
		case "$barrier":
			m.arrive(p, mark{name: string(payload)})
			return nil, nil
		}
		m.mu.Lock()
		q := m.topics[topic]
		m.mu.Unlock()
		if q == nil {
			return nil, fmt.Errorf("no handler for %q", topic)
		}
		return m.queue(p, q, payload, await), nil
	case frameData:
		if len(b) < 20 {
			return nil, errors.New("malformed data frame")
		}
		node := binary.BigEndian.Uint16(b[1:])
		dst := binary.BigEndian.Uint32(b[3:])
		from := int32(binary.BigEndian.Uint32(b[7:]))
		h := DataHeader{Node: node, Dst: dst, From: from, Kind: b[11], Epoch: binary.BigEndian.Uint64(b[12:])}
		m.mu.Lock()
		fn := m.onData
		m.mu.Unlock()
		if fn == nil {
			return nil, errors.New("data frame before this process was ready for one")
		}
		if !m.enter() {
			return nil, nil // the handlers stopped: dropped
		}
		defer m.leave()
		return nil, fn(p.id, h, b[20:])
	case frameCredit:
		if len(b) != 11 {
			return nil, errors.New("malformed credit frame")
		}
		m.mu.Lock()
		fn := m.onCredit
		m.mu.Unlock()
		if fn == nil {
			return nil, errors.New("credit frame before this process was ready for one")
		}
		if !m.enter() {
			return nil, nil
		}
		defer m.leave()
		return nil, fn(p.id, binary.BigEndian.Uint16(b[1:]), binary.BigEndian.Uint32(b[3:]), binary.BigEndian.Uint32(b[7:]))
	default:
		return nil, fmt.Errorf("unknown frame type %d", b[0])
	}
	return nil, nil
}

// DataHeaderLen is the size of a data frame's header, after the type byte.
const DataHeaderLen = 19

// SendData sends a data frame whose payload already follows a reserved
// DataHeaderLen-byte prefix in b (so a batch is encoded only once, in
// place). The mesh owns b afterwards.
func (m *Mesh) SendData(ctx context.Context, to int, h DataHeader, b []byte) error {
	if len(b) < DataHeaderLen {
		return errors.New("data frame without its header room")
	}
	binary.BigEndian.PutUint16(b[0:], h.Node)
	binary.BigEndian.PutUint32(b[2:], h.Dst)
	binary.BigEndian.PutUint32(b[6:], uint32(h.From))
	b[10] = h.Kind
	binary.BigEndian.PutUint64(b[11:], h.Epoch)
	return m.enqueue(ctx, to, frame{frameData, b})
}

// SendCredit gives n credits for (node, dst) back to process to.
func (m *Mesh) SendCredit(ctx context.Context, to int, node uint16, dst uint32, n uint32) error {
	b := make([]byte, 10)
	binary.BigEndian.PutUint16(b[0:], node)
	binary.BigEndian.PutUint32(b[2:], dst)
	binary.BigEndian.PutUint32(b[6:], n)
	return m.enqueue(ctx, to, frame{frameCredit, b})
}

// byeWait bounds Close's wait for the peers (its goodbyes sent, theirs
// received), whatever Close's context allows.
const byeWait = 5 * time.Second

// StopHandlers stops the handlers' work: no handler call starts from now
// on, and it waits, until ctx ends, for the calls in flight and the topics'
// goroutines to end. Frames that arrive later are read and dropped (so the
// peers are not stalled); a barrier or gather waiting then fails. Sends
// still work, until Close. The runtime stops the handlers before it closes
// what they use (recovery), and closes the mesh after that.
func (m *Mesh) StopHandlers(ctx context.Context) error {
	m.haltHandlers(errHandlersStopped)
	if err := m.awaitHandlers(ctx); err != nil {
		return fmt.Errorf("stop mesh handlers: %w", err)
	}
	return nil
}

// Close ends the mesh. From its start, sends, barriers and gathers are
// refused (with an error wrapping ErrClosed); it stops the handlers and
// waits for the calls in flight (StopHandlers), says goodbye to every peer
// (or, with a cause, tells them why this process stops) and waits briefly
// for their goodbyes, then closes the connections and waits for its
// goroutines to end. Every wait ends when ctx does (and the waits for the
// peers after byeWait at most), so a stuck peer or handler cannot hold
// Close forever; it then returns an error saying what was still running.
// Close is safe to call more than once: later calls return the first's
// result.
func (m *Mesh) Close(ctx context.Context, cause error) error {
	m.closeOnce.Do(func() { m.closeErr = m.close(ctx, cause) })
	return m.closeErr
}

func (m *Mesh) close(ctx context.Context, cause error) error {
	m.closing.Store(true)
	close(m.shut)
	m.stopCtx()
	var errs []error
	if err := m.StopHandlers(ctx); err != nil {
		errs = append(errs, err)
	}
	f := frame{typ: frameBye}
	if cause != nil {
		f = frame{frameAbort, []byte(cause.Error())}
	}
	peers, cancel := context.WithTimeout(ctx, byeWait)
	defer cancel()
	for _, p := range m.peers {
		if p == nil {
			continue
		}
		select {
		case p.out <- f:
			continue
		default:
		}
		select {
		case p.out <- f:
		case <-p.wdone:
		case <-peers.Done():
		}
	}
	wait := func(ctx context.Context, ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
		}
		select {
		case <-ch:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for _, p := range m.peers {
		if p == nil {
			continue
		}
		if wait(peers, p.wdone) && cause == nil {
			wait(peers, p.done)
		}
	}
	m.closeNow()
	// Closed connections end the readers and writers promptly.
	for _, p := range m.peers {
		if p == nil {
			continue
		}
		if !wait(ctx, p.wdone) || !wait(ctx, p.done) {
			errs = append(errs, fmt.Errorf("close mesh: the connection with process %d (%s) is still in use: %w", p.id, m.addrs[p.id], context.Cause(ctx)))
			break
		}
	}
	return errors.Join(errs...)
}

func (m *Mesh) closeNow() {
	m.closing.Store(true)
	m.haltHandlers(errHandlersStopped)
	m.downOnce.Do(func() { close(m.down) })
	if m.ln != nil {
		m.ln.Close()
	}
	for _, p := range m.peers {
		if p != nil && p.closed.CompareAndSwap(false, true) {
			p.conn.Close()
		}
	}
}
