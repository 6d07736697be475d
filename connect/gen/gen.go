// Package gen is a deterministic generator source for tests and benchmarks.
package gen

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/flowkeep/flowkeep/core"
)

// Generator is a deterministic source for tests and benchmarks: Partitions
// partitions named "gen-0".."gen-(n-1)", each producing Count items
// Make(partition, i) for i = 0..Count-1. Its position is the next i.
type Generator[T any] struct {
	Parts int
	Count int64
	Make  func(part int, i int64) T
	// Delay, if set, spaces batches: each becomes available Delay after the
	// previous one (or after Open), to simulate a slow input. A poll that
	// comes earlier waits at most its wait, then returns an empty batch.
	Delay time.Duration
	// Batch bounds the items one batch holds; 0 means 1024.
	Batch int
}

// Partitions implements core.Source.
func (g Generator[T]) Partitions(context.Context) ([]string, error) {
	out := make([]string, g.Parts)
	for i := range out {
		out[i] = "gen-" + strconv.Itoa(i)
	}
	return out, nil
}

// Open implements core.Source.
func (g Generator[T]) Open(_ context.Context, part string, resume []byte) (core.SourcePartition[T], error) {
	var idx int
	if _, err := fmt.Sscanf(part, "gen-%d", &idx); err != nil {
		return nil, fmt.Errorf("unknown generator partition %q", part)
	}
	p := &genPart[T]{g: g, part: idx, ready: time.Now().Add(g.Delay)}
	if resume != nil {
		n, err := strconv.ParseInt(string(resume), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("stored generator position %q: %w", resume, err)
		}
		p.next = n
	}
	return p, nil
}

// batchSize bounds the items one NextBatch returns unless Generator.Batch says otherwise.
const batchSize = 1024

type genPart[T any] struct {
	g     Generator[T]
	part  int
	next  int64
	batch []T
	ready time.Time // when the next batch is available (with Delay)
}

func (p *genPart[T]) NextBatch(ctx context.Context, wait time.Duration) ([]T, error) {
	p.batch = p.batch[:0]
	if p.g.Delay > 0 {
		if due, err := core.WaitUntil(ctx, p.ready, wait); err != nil || !due {
			return p.batch, err
		}
		p.ready = time.Now().Add(p.g.Delay)
	}
	size := p.g.Batch
	if size <= 0 {
		size = batchSize
	}
	for p.next < p.g.Count && len(p.batch) < size {
		p.batch = append(p.batch, p.g.Make(p.part, p.next))
		p.next++
	}
	if p.next >= p.g.Count {
		return p.batch, io.EOF
	}
	return p.batch, nil
}

func (p *genPart[T]) Position() []byte { return strconv.AppendInt(nil, p.next, 10) }
func (p *genPart[T]) Close() error     { return nil }
