// Package mesh is the transport between the processes of a flowkeep
// cluster: one TCP connection per pair of processes, carrying
// length-prefixed frames in order.
//
// # Contract
//
//   - Dial connects process Self to every other process of Addresses: lower
//     indexes dial higher ones, and every connection starts with a hello that
//     names the process and the run's identity string, which must match on
//     both ends. Dial returns once every peer answered, or fails.
//   - Send is ordered per (sender, receiver) pair and blocks while the
//     connection's bounded queue is full.
//   - Handlers (Handle, and the OnData and OnCredit hooks) run on the
//     connection's reader goroutine, in arrival order; they may block only on
//     local resources, never on another message.
//   - Barrier returns once every process reached the barrier of that name,
//     which also means every message sent before it by any process to this
//     one has been handled. Gather is a barrier that also collects one
//     payload from each process.
//   - A peer that goes silent (no frame, not even a ping, for a while), drops
//     its connection or aborts makes the mesh call the fail function given to
//     Dial once, with an error naming the peer; Close says goodbye (or, with
//     a cause, tells the peers why this process stops).
//
// The mesh knows nothing of dataflows: data and credit frames carry an
// opaque header (DataHeader) and payload for the runtime's exchanges.
package mesh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
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
)

const (
	maxFrame    = 64 << 20
	peerQueue   = 256
	pingEvery   = time.Second
	peerSilence = 15 * time.Second
)

type frame struct {
	typ byte
	b   []byte // payload after the type byte
}

// Mesh is this process's end of the cluster's connections.
type Mesh struct {
	self  int
	addrs []string
	ident string
	ln    net.Listener
	peers []*peer

	mu       sync.Mutex
	handlers map[string]func(int, []byte)
	barriers map[string]map[int]bool
	gathered map[string]map[int][]byte
	barrierC chan struct{} // closed and replaced whenever a barrier or gather message arrives

	// OnData receives data frames and OnCredit credit frames (set them
	// before the first frame can arrive: before any process passes a
	// barrier after Dial).
	OnData   func(from int, h DataHeader, payload []byte) error
	OnCredit func(from int, node uint16, dst uint32, n uint32)

	failOnce sync.Once
	fail     func(error)
	closing  atomic.Bool
}

type peer struct {
	id     int
	conn   net.Conn
	out    chan frame
	bye    atomic.Bool
	done   chan struct{} // reader ended
	wdone  chan struct{} // writer ended
	closed atomic.Bool
}

// Self is this process's index.
func (m *Mesh) Self() int { return m.self }

// Processes is the number of processes in the cluster.
func (m *Mesh) Processes() int { return len(m.addrs) }

// Handle registers fn for messages of topic.
func (m *Mesh) Handle(topic string, fn func(int, []byte)) {
	m.mu.Lock()
	m.handlers[topic] = fn
	m.mu.Unlock()
}

func (m *Mesh) enqueue(ctx context.Context, to int, f frame) error {
	p := m.peers[to]
	if p == nil {
		return fmt.Errorf("no peer %d", to)
	}
	select {
	case p.out <- f:
		return nil
	case <-p.wdone:
		return fmt.Errorf("connection to process %d (%s) is closed", to, m.addrs[to])
	case <-ctx.Done():
		return context.Cause(ctx)
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
		}
	}
}

// Dial connects this process to every other one (see the package doc).
// ident is the run's identity: every process must give the same. fail is
// called once when a peer is lost after Dial returned.
func Dial(ctx context.Context, cfg Config, ident string, fail func(error)) (*Mesh, error) {
	n := len(cfg.Addresses)
	if cfg.Self < 0 || cfg.Self >= n {
		return nil, fmt.Errorf("process id %d is not an index into the %d addresses", cfg.Self, n)
	}
	timeout := cfg.ConnectTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	m := &Mesh{self: cfg.Self, addrs: cfg.Addresses, ident: ident, peers: make([]*peer, n),
		handlers: map[string]func(int, []byte){}, barriers: map[string]map[int]bool{}, gathered: map[string]map[int][]byte{}, barrierC: make(chan struct{}), fail: fail}
	ln, err := net.Listen("tcp", cfg.Addresses[cfg.Self])
	if err != nil {
		return nil, fmt.Errorf("listen on %s (process %d): %w", cfg.Addresses[cfg.Self], cfg.Self, err)
	}
	m.ln = ln
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		id   int
		conn net.Conn
		err  error
	}
	results := make(chan result, n)
	expectIn := 0
	for j := 0; j < m.self; j++ {
		expectIn++
	}
	go func() {
		for k := 0; k < expectIn; k++ {
			c, err := ln.Accept()
			if err != nil {
				results <- result{-1, nil, err}
				return
			}
			go func() {
				c.SetDeadline(time.Now().Add(timeout))
				id, err := m.readHello(c)
				if err == nil {
					err = m.writeHello(c)
				}
				c.SetDeadline(time.Time{})
				results <- result{id, c, err}
			}()
		}
	}()
	for j := m.self + 1; j < n; j++ {
		go func(j int) {
			var d net.Dialer
			for {
				c, err := d.DialContext(ctx, "tcp", cfg.Addresses[j])
				if err == nil {
					c.SetDeadline(time.Now().Add(timeout))
					err = m.writeHello(c)
					var id int
					if err == nil {
						id, err = m.readHello(c)
					}
					c.SetDeadline(time.Time{})
					if err == nil && id != j {
						err = fmt.Errorf("%s answered as process %d, not %d", cfg.Addresses[j], id, j)
					}
					results <- result{j, c, err}
					return
				}
				select {
				case <-ctx.Done():
					results <- result{j, nil, fmt.Errorf("process %d at %s did not come up within %v: %w", j, cfg.Addresses[j], timeout, err)}
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}(j)
	}
	var firstErr error
	for k := 0; k < n-1; k++ {
		var r result
		select {
		case r = <-results:
		case <-ctx.Done():
			r = result{-1, nil, fmt.Errorf("waiting for the other processes: %w", ctx.Err())}
		}
		if r.err != nil {
			if firstErr == nil {
				firstErr = r.err
			}
			if r.conn != nil {
				r.conn.Close()
			}
			if r.id < 0 {
				break
			}
			continue
		}
		if r.id < 0 || r.id >= n || r.id == m.self || m.peers[r.id] != nil {
			r.conn.Close()
			if firstErr == nil {
				firstErr = fmt.Errorf("unexpected connection from process %d", r.id)
			}
			continue
		}
		m.peers[r.id] = &peer{id: r.id, conn: r.conn, out: make(chan frame, peerQueue), done: make(chan struct{}), wdone: make(chan struct{})}
	}
	if firstErr != nil {
		m.closeNow()
		return nil, firstErr
	}
	for _, p := range m.peers {
		if p != nil {
			go m.writeLoop(p)
			go m.readLoop(p)
		}
	}
	return m, nil
}

func (m *Mesh) writeHello(c net.Conn) error {
	b := binary.AppendUvarint([]byte{frameHello}, uint64(m.self))
	b = append(b, m.ident...)
	return writeFrame(c, b)
}

func (m *Mesh) readHello(c net.Conn) (int, error) {
	// Unbuffered: the peer's first frames may follow the hello at once, and
	// must be left in the connection for the reader.
	b, err := readFrame(c)
	if err != nil {
		return -1, fmt.Errorf("handshake: %w", err)
	}
	if len(b) < 2 || b[0] != frameHello {
		return -1, errors.New("handshake: not a flowrun peer")
	}
	id, k := binary.Uvarint(b[1:])
	if k <= 0 {
		return -1, errors.New("handshake: malformed hello")
	}
	if got := string(b[1+k:]); got != m.ident {
		return -1, fmt.Errorf("process %d runs %q but this one (%d) runs %q: start every process with the same flow, -w and addresses", id, got, m.self, m.ident)
	}
	return int(id), nil
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

func readFrame(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n == 0 || n > maxFrame {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
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
		}
		if err := writeTyped(w, f.typ, f.b); err != nil {
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

func (m *Mesh) readLoop(p *peer) {
	defer close(p.done)
	r := bufio.NewReaderSize(p.conn, 256<<10)
	for {
		p.conn.SetReadDeadline(time.Now().Add(peerSilence))
		b, err := readFrame(r)
		if err != nil {
			if p.bye.Load() {
				return
			}
			m.peerFailed(p, err)
			return
		}
		if err := m.dispatch(p, b); err != nil {
			m.peerFailed(p, err)
			return
		}
		if p.bye.Load() {
			return
		}
	}
}

func (m *Mesh) dispatch(p *peer, b []byte) error {
	switch b[0] {
	case framePing:
	case frameBye:
		p.bye.Store(true)
	case frameAbort:
		p.bye.Store(true)
		m.failOnce.Do(func() { m.fail(fmt.Errorf("process %d (%s) failed: %s", p.id, m.addrs[p.id], b[1:])) })
	case frameTopic:
		if len(b) < 2 || int(b[1]) > len(b)-2 {
			return errors.New("malformed frame")
		}
		topic := string(b[2 : 2+b[1]])
		payload := b[2+b[1]:]
		if topic == "$gather" {
			name, data, ok := bytes.Cut(payload, []byte{0})
			if !ok {
				return errors.New("malformed gather")
			}
			m.mu.Lock()
			if m.gathered[string(name)] == nil {
				m.gathered[string(name)] = map[int][]byte{}
			}
			m.gathered[string(name)][p.id] = append([]byte(nil), data...)
			close(m.barrierC)
			m.barrierC = make(chan struct{})
			m.mu.Unlock()
			return nil
		}
		if topic == "$barrier" {
			m.mu.Lock()
			name := string(payload)
			if m.barriers[name] == nil {
				m.barriers[name] = map[int]bool{}
			}
			m.barriers[name][p.id] = true
			close(m.barrierC)
			m.barrierC = make(chan struct{})
			m.mu.Unlock()
			return nil
		}
		m.mu.Lock()
		h := m.handlers[topic]
		m.mu.Unlock()
		if h == nil {
			return fmt.Errorf("no handler for %q", topic)
		}
		h(p.id, payload)
	case frameData:
		if len(b) < 20 {
			return errors.New("malformed data frame")
		}
		node := binary.BigEndian.Uint16(b[1:])
		dst := binary.BigEndian.Uint32(b[3:])
		from := int32(binary.BigEndian.Uint32(b[7:]))
		h := DataHeader{Node: node, Dst: dst, From: from, Kind: b[11], Epoch: binary.BigEndian.Uint64(b[12:])}
		return m.OnData(p.id, h, b[20:])
	case frameCredit:
		if len(b) != 11 {
			return errors.New("malformed credit frame")
		}
		m.OnCredit(p.id, binary.BigEndian.Uint16(b[1:]), binary.BigEndian.Uint32(b[3:]), binary.BigEndian.Uint32(b[7:]))
	default:
		return fmt.Errorf("unknown frame type %d", b[0])
	}
	return nil
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

// Close says goodbye to every peer (or, with a cause, tells them why this
// process failed) and waits briefly for their goodbyes before closing the
// connections.
func (m *Mesh) Close(cause error) {
	m.closing.Store(true)
	f := frame{typ: frameBye}
	if cause != nil {
		f = frame{frameAbort, []byte(cause.Error())}
	}
	for _, p := range m.peers {
		if p == nil {
			continue
		}
		select {
		case p.out <- f:
		case <-p.wdone:
		case <-time.After(2 * time.Second):
		}
	}
	deadline := time.After(5 * time.Second)
	for _, p := range m.peers {
		if p == nil {
			continue
		}
		select {
		case <-p.wdone:
		case <-deadline:
		}
		if cause == nil {
			select {
			case <-p.done:
			case <-deadline:
			}
		}
	}
	m.closeNow()
}

func (m *Mesh) closeNow() {
	m.closing.Store(true)
	if m.ln != nil {
		m.ln.Close()
	}
	for _, p := range m.peers {
		if p != nil && p.closed.CompareAndSwap(false, true) {
			p.conn.Close()
		}
	}
}
