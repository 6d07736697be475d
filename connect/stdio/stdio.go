// Package stdio holds flowkeep's standard input and output connectors.
// Neither can be replayed or rewound: around a resume, stdin input is not
// re-read and stdout output is at-least-once.
package stdio

import (
	"bufio"
	"context"
	"io"
	"os"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/core"
)

// Stdin reads lines from standard input (one partition, "stdin").
// Standard input cannot be replayed: a resumed run reads whatever comes next.
type Stdin struct{ R io.Reader }

// Partitions implements core.Source.
func (Stdin) Partitions(context.Context) ([]string, error) { return []string{"stdin"}, nil }

// Open implements core.Source.
func (s Stdin) Open(context.Context, string, []byte) (core.SourcePartition[string], error) {
	r := s.R
	if r == nil {
		r = os.Stdin
	}
	p := &stdinPart{lines: make(chan string, linesPerBatch), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		for sc.Scan() {
			p.lines <- strings.TrimSuffix(sc.Text(), "\r")
		}
		close(p.lines)
		p.done <- sc.Err()
	}()
	return p, nil
}

// linesPerBatch bounds the lines one NextBatch returns.
const linesPerBatch = 1024

type stdinPart struct {
	lines chan string
	done  chan error
	batch []string
}

func (p *stdinPart) NextBatch(ctx context.Context, wait time.Duration) ([]string, error) {
	p.batch = p.batch[:0]
	t := time.NewTimer(wait)
	defer t.Stop()
	for len(p.batch) < linesPerBatch {
		select {
		case l, ok := <-p.lines:
			if !ok {
				if err := <-p.done; err != nil {
					return p.batch, err
				}
				return p.batch, io.EOF
			}
			p.batch = append(p.batch, l)
			continue
		default:
		}
		if len(p.batch) > 0 {
			return p.batch, nil
		}
		select {
		case l, ok := <-p.lines:
			if !ok {
				if err := <-p.done; err != nil {
					return p.batch, err
				}
				return p.batch, io.EOF
			}
			p.batch = append(p.batch, l)
		case <-t.C:
			return p.batch, nil
		case <-ctx.Done():
			return p.batch, ctx.Err()
		}
	}
	return p.batch, nil
}

func (p *stdinPart) Position() []byte { return nil }
func (p *stdinPart) Close() error     { return nil }

// Stdout writes lines to standard output (one partition, "stdout").
// Written lines are visible at once: they are flushed whenever the flow has
// nothing more to give right now, and at least every few milliseconds under
// load, never held until the epoch closes. Standard output cannot be
// rewound: around a resume it is at-least-once.
type Stdout struct{ W io.Writer }

// Partitions implements core.Sink.
func (Stdout) Partitions(context.Context) ([]string, error) { return []string{"stdout"}, nil }

// PartitionFor implements core.Sink.
func (Stdout) PartitionFor(string) string { return "stdout" }

// Open implements core.Sink.
func (s Stdout) Open(context.Context, string, []byte) (core.SinkPartition[string], error) {
	w := s.W
	if w == nil {
		w = os.Stdout
	}
	return &stdoutPart{w: bufio.NewWriter(w)}, nil
}

type stdoutPart struct{ w *bufio.Writer }

var _ core.Flusher = (*stdoutPart)(nil)

// Write implements core.SinkPartition: lines go to the buffer, which Flush
// empties.
func (p *stdoutPart) Write(_ context.Context, items []string) error {
	for _, it := range items {
		p.w.WriteString(it)
		if err := p.w.WriteByte('\n'); err != nil {
			return err
		}
	}
	return nil
}

// Flush implements core.Flusher.
func (p *stdoutPart) Flush(context.Context) error { return p.w.Flush() }

// Commit implements core.SinkPartition (standard output has no position).
func (p *stdoutPart) Commit(context.Context, core.Epoch) ([]byte, error) { return nil, p.w.Flush() }

// Close implements core.SinkPartition.
func (p *stdoutPart) Close(context.Context) error { return p.w.Flush() }
