package flowrun

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
)

// progress keeps one status line on a terminal while a flow runs: the epoch
// it is in and, with recovery, the last epoch durable in every partition
// (what a crash now would resume after). Off a terminal it prints nothing.
type progress struct {
	mu      sync.Mutex
	w       io.Writer
	flow    string
	start   time.Time
	now     func() time.Time
	epoch   core.Epoch
	parts   int                                    // partitions this process writes (0: no recovery)
	durable map[recovery.PartitionIndex]core.Epoch // committed frontier per partition
	stretch time.Duration                          // how much the last epoch was stretched
	// cluster, if set, gives the frontier durable in every partition of
	// the flow (which a process of a cluster hears from its peers).
	cluster func() core.Epoch
	read    *atomic.Int64 // items the sources read, if counted
	drawn   bool
	last    time.Time // last drawn
	lastN   int64     // items read at the last draw
}

// newProgress returns nil unless w is a terminal; a nil *progress does
// nothing.
func newProgress(w io.Writer, flow string) *progress {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return newProgressTo(w, flow, time.Now)
}

func newProgressTo(w io.Writer, flow string, now func() time.Time) *progress {
	return &progress{w: w, flow: flow, start: now(), now: now, durable: map[recovery.PartitionIndex]core.Epoch{}}
}

// writes says how many partitions this process's recovery store writes.
func (p *progress) writes(parts int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.parts = parts
}

// durableFrom makes the line show the flow-wide durable frontier that fn
// reports (a cluster process's view of every partition).
func (p *progress) durableFrom(fn func() core.Epoch) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cluster = fn
}

// counts makes the line show how many items the sources read, and how
// fast.
func (p *progress) counts(read *atomic.Int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.read = read
}

// opened is core.Config.OnEpoch.
func (p *progress) opened(e core.Epoch) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.epoch = e
	p.drawLocked()
	p.stretch = 0
}

// stretched is core.Config.OnStretch: epoch e lasted by longer than -s,
// waiting for the snapshot before it.
func (p *progress) stretched(_ core.Epoch, by time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stretch = by
	p.drawLocked()
}

// committed is recovery.Options.OnCommitted: every epoch below frontier is
// durable in partition i.
func (p *progress) committed(i recovery.PartitionIndex, frontier recovery.Epoch) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.durable[i] = core.Epoch(frontier)
	if p.epoch > 0 && p.now().Sub(p.last) >= time.Second {
		p.drawLocked()
	}
}

func (p *progress) drawLocked() {
	line := fmt.Sprintf("flowrun: %s: epoch %d", p.flow, p.epoch)
	if p.stretch > 0 {
		line += fmt.Sprintf(" (stretched %v: snapshots are behind)", p.stretch.Round(100*time.Millisecond))
	}
	if p.read != nil {
		n := p.read.Load()
		line += fmt.Sprintf(", read %s items", count(n))
		if dt := p.now().Sub(p.last); p.drawn && dt > 0 {
			line += fmt.Sprintf(" (%s/s)", count(int64(float64(n-p.lastN)/dt.Seconds())))
		}
		p.lastN = n
	}
	switch {
	case p.cluster != nil:
		if f := p.cluster(); f > 1 {
			line += fmt.Sprintf(", durable through epoch %d", f-1)
		} else {
			line += ", no epoch durable yet"
		}
	case p.parts > 0:
		if len(p.durable) < p.parts {
			line += ", no epoch durable yet"
		} else {
			low := core.Epoch(0)
			for _, f := range p.durable {
				if low == 0 || f < low {
					low = f
				}
			}
			line += fmt.Sprintf(", durable through epoch %d", low-1)
		}
	}
	line += fmt.Sprintf(", running %v", p.now().Sub(p.start).Round(time.Second))
	fmt.Fprintf(p.w, "\r\033[K%s", line)
	p.drawn, p.last = true, p.now()
}

// clear removes the status line, before the run's last words.
func (p *progress) clear() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

// count formats an item count: 950, 12.3k, 4.1M.
func count(n int64) string {
	switch {
	case n < 10_000:
		return fmt.Sprint(n)
	case n < 1_000_000:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	case n < 1_000_000_000:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	}
	return fmt.Sprintf("%.1fG", float64(n)/1e9)
}

// durableTracker follows the frontier committed in each partition this
// process writes (recovery.Options.OnCommitted), for the status line and
// for what an interrupted run says was saved.
type durableTracker struct {
	mu     sync.Mutex
	parts  int
	f      map[recovery.PartitionIndex]core.Epoch
	notify func(recovery.PartitionIndex, recovery.Epoch)
}

func (d *durableTracker) committed(i recovery.PartitionIndex, f recovery.Epoch) {
	d.mu.Lock()
	if d.f == nil {
		d.f = map[recovery.PartitionIndex]core.Epoch{}
	}
	d.f[i] = core.Epoch(f)
	notify := d.notify
	d.mu.Unlock()
	if notify != nil {
		notify(i, f)
	}
}

// frontier is the lowest committed frontier once every partition reported
// one, else 0.
func (d *durableTracker) frontier() core.Epoch {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.parts == 0 || len(d.f) < d.parts {
		return 0
	}
	low := core.Epoch(0)
	for _, f := range d.f {
		if low == 0 || f < low {
			low = f
		}
	}
	return low
}
