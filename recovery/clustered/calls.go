package clustered

// Requests to peers and their replies (state on demand, see state.go).

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/flowkeep/flowkeep/recovery"
)

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
