package mesh

import (
	"fmt"
	"io"
	"net"
)

// Detached returns process self's end of a cluster of processes processes
// whose peers are not connected: what it sends them is discarded, and
// Receive hands it frames as if a peer had sent them. It is for tests and
// fuzzing of the handlers, through the same dispatch as a real connection.
// Close it like a mesh from Dial.
func Detached(self, processes int, fail func(error)) *Mesh {
	m := newMesh(self, make([]string, processes), fail)
	for i := range m.addrs {
		m.addrs[i] = fmt.Sprintf("detached-%d", i)
		if i == self {
			continue
		}
		c, sink := net.Pipe()
		go func() {
			io.Copy(io.Discard, sink)
			sink.Close()
		}()
		p := &peer{id: i, conn: c, out: make(chan frame, peerQueue), done: make(chan struct{}), wdone: make(chan struct{})}
		close(p.done) // no reader: Receive stands for it
		m.peers[i] = p
		go m.writeLoop(p)
	}
	return m
}

// Receive acts on frame (a frame's bytes after its length prefix) as if
// process from had sent it, and returns what the connection's reader would
// fail the run with: after an error a real connection reads no further.
// For a topic message it waits for the handler and returns its error.
func (m *Mesh) Receive(from int, frame []byte) error {
	if from < 0 || from >= len(m.peers) || m.peers[from] == nil {
		return fmt.Errorf("no peer %d", from)
	}
	p := m.peers[from]
	if p.refused.Load() {
		return fmt.Errorf("a message from process %d was refused: nothing after it is read", from)
	}
	res, err := m.dispatch(p, frame, true)
	if err != nil || res == nil {
		return err
	}
	select {
	case err := <-res:
		return err
	case <-m.halt:
		// The handlers stopped: once the calls in flight end, the message
		// was either handled or never will be.
		m.calls.Wait()
		select {
		case err := <-res:
			return err
		default:
			return fmt.Errorf("message from process %d not handled: %w", from, ErrClosed)
		}
	}
}
