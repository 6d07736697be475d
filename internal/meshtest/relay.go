// Package meshtest is an on-path relay for tests of the cluster's mesh: a
// TCP proxy between two processes that sees every length-prefixed frame
// and may drop, change, add or reorder frames, as an attacker on the
// network between them could. It knows the mesh's framing (a 4-byte
// big-endian length, then the frame), nothing else; it must never be used
// outside tests.
package meshtest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
)

// Dir is the direction a frame travels.
type Dir int

const (
	// Forward frames go from the process that dialed the relay to the
	// target.
	Forward Dir = iota
	// Backward frames go from the target to the process that dialed.
	Backward
)

func (d Dir) String() string {
	if d == Forward {
		return "forward"
	}
	return "backward"
}

// maxFrame bounds what the relay reads; larger than any mesh frame.
const maxFrame = 128 << 20

// Tamper decides what the relay sends on in place of frame i (counted from
// 0 per connection and direction, handshake frames included) travelling in
// dir: nil drops it, several frames are sent in order. Frames are given and
// returned without their length prefix. It is called from one goroutine
// per connection and direction, so it must be safe for concurrent use.
type Tamper func(dir Dir, i int, frame []byte) [][]byte

// Relay is a running relay; Addr is where to dial the target through it.
type Relay struct {
	Addr   string
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

// Start listens on 127.0.0.1 and forwards every connection it accepts to
// target, passing each frame through tamper (nil forwards them as they
// are). The relay stops when the test ends.
func Start(t testing.TB, target string, tamper Tamper) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{Addr: ln.Addr().String(), ln: ln}
	if tamper == nil {
		tamper = func(_ Dir, _ int, f []byte) [][]byte { return [][]byte{f} }
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.relay(c, target, tamper)
			}()
		}
	}()
	t.Cleanup(r.Close)
	return r
}

// track remembers c so that Close can end it; it reports false once the
// relay is closed.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns = append(r.conns, c)
	return true
}

func (r *Relay) relay(client net.Conn, target string, tamper Tamper) {
	if !r.track(client) {
		client.Close()
		return
	}
	server, err := net.Dial("tcp", target)
	if err != nil { // the target is not listening yet: the client retries
		client.Close()
		return
	}
	if !r.track(server) {
		server.Close()
		client.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	pump := func(dir Dir, from, to net.Conn) {
		defer wg.Done()
		// Either side ending ends both, as a proxy does.
		defer from.Close()
		defer to.Close()
		for i := 0; ; i++ {
			f, err := readFrame(from)
			if err != nil {
				return
			}
			for _, out := range tamper(dir, i, f) {
				if err := writeFrame(to, out); err != nil {
					return
				}
			}
		}
	}
	go pump(Forward, client, server)
	go pump(Backward, server, client)
	wg.Wait()
}

// Close stops the relay and ends its connections.
func (r *Relay) Close() {
	r.mu.Lock()
	r.closed = true
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	r.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	r.wg.Wait()
}

func readFrame(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > maxFrame {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func writeFrame(w io.Writer, b []byte) error {
	out := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err := w.Write(append(out, b...))
	return err
}
