package flowbackup

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/term"

	"github.com/flowkeep/flowkeep/internal/human"
)

// transferBar keeps one progress line on a terminal while bytes move:
// how many (of how many, when known), objects, rate and time left. Off a
// terminal it is nil and draws nothing.
type transferBar struct {
	w     io.Writer
	label string
	start time.Time
	stop  chan struct{}
	ended chan struct{}
}

func newTransferBar(w io.Writer, label string) *transferBar {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &transferBar{w: w, label: label, start: time.Now(), stop: make(chan struct{}), ended: make(chan struct{})}
}

// run draws the line every quarter second from poll: bytes done, bytes in
// all (0: unknown) and objects done.
func (b *transferBar) run(poll func() (done, total, objects int64)) {
	if b == nil {
		return
	}
	go func() {
		defer close(b.ended)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				fmt.Fprint(b.w, "\r\033[K")
				return
			case <-t.C:
				done, total, objects := poll()
				fmt.Fprint(b.w, "\r\033[K"+progressLine(b.label, done, total, objects, time.Since(b.start)))
			}
		}
	}()
}

// finish removes the line.
func (b *transferBar) finish() {
	if b == nil {
		return
	}
	close(b.stop)
	<-b.ended
}

// progressLine is "restoring: 120.0 MiB of 400.0 MiB (30%), 42 objects,
// 50.0 MiB/s, 6s left".
func progressLine(label string, done, total, objects int64, took time.Duration) string {
	line := label + ": " + human.Bytes(done)
	if total > 0 {
		line += fmt.Sprintf(" of %s (%.0f%%)", human.Bytes(total), 100*float64(min(done, total))/float64(total))
	}
	line += fmt.Sprintf(", %d objects", objects)
	if secs := took.Seconds(); secs > 0 && done > 0 {
		rate := float64(done) / secs
		line += ", " + human.Bytes(int64(rate)) + "/s"
		if total > done {
			line += ", " + time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second).String() + " left"
		}
	}
	return line
}

// progressCounter holds the latest (done, total) a callback reported.
type progressCounter struct{ done, total, objects atomic.Int64 }

func (p *progressCounter) update(done, total int64) {
	p.done.Store(done)
	p.total.Store(total)
	p.objects.Add(1)
}

func (p *progressCounter) poll() (int64, int64, int64) {
	return p.done.Load(), p.total.Load(), p.objects.Load()
}
