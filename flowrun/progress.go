package flowrun

import (
	"fmt"
	"io"
	"os"
	"sync"
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
	drawn   bool
	last    time.Time // last drawn
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
	if p.parts > 0 {
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
