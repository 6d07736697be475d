package core

import (
	"context"
	"fmt"
	"time"
)

// Source is a partitioned input. Partition names must be stable across runs
// and machines: they key the partition's resume state, and partition p is read
// by worker KeyHash(p) mod W.
type Source[T any] interface {
	// Partitions lists the partition names. Every process of a run must see
	// the same list.
	Partitions(ctx context.Context) ([]string, error)
	// Open opens partition part. resume is the Position the partition reported
	// at the newest snapshot before the resume epoch, or nil on a fresh start.
	Open(ctx context.Context, part string, resume []byte) (SourcePartition[T], error)
}

// SourcePartition reads one partition.
type SourcePartition[T any] interface {
	// NextBatch returns the next items. It may return an empty batch when
	// nothing arrived within about wait (so epochs keep closing on idle
	// inputs). It returns io.EOF, possibly together with a last batch, at end
	// of input. The batch is only read until the next call.
	NextBatch(ctx context.Context, wait time.Duration) ([]T, error)
	// Position is the resume state: the position just after the last item
	// returned. It is snapshotted when an epoch closes.
	Position() []byte
	Close() error
}

// WaitUntil is for a source partition that paces its batches: it sleeps
// until t, but at most wait (NextBatch's argument), and reports whether t
// was reached; if not, NextBatch should return an empty batch so epochs
// keep closing. It returns ctx's error if ctx ends first.
func WaitUntil(ctx context.Context, t time.Time, wait time.Duration) (bool, error) {
	d := time.Until(t)
	if d <= 0 {
		return true, nil
	}
	timer := time.NewTimer(min(d, wait))
	defer timer.Stop()
	select {
	case <-timer.C:
		return d <= wait, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

type inputImpl interface {
	partitions(ctx context.Context) ([]string, error)
	open(ctx context.Context, part string, resume []byte) (anyPartition, error)
}

// anyPartition is a SourcePartition with its type erased to the batch.
type anyPartition interface {
	next(ctx context.Context, wait time.Duration) (batch any, n int, err error)
	Position() []byte
	Close() error
}

type typedInput[T any] struct{ src Source[T] }

func (t typedInput[T]) partitions(ctx context.Context) ([]string, error) {
	parts, err := t.src.Partitions(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, p := range parts {
		if seen[p] {
			return nil, fmt.Errorf("partition name %q is listed twice", p)
		}
		seen[p] = true
	}
	return parts, nil
}

func (t typedInput[T]) open(ctx context.Context, part string, resume []byte) (anyPartition, error) {
	p, err := t.src.Open(ctx, part, resume)
	if err != nil {
		return nil, err
	}
	return typedPartition[T]{p}, nil
}

type typedPartition[T any] struct{ SourcePartition[T] }

func (t typedPartition[T]) next(ctx context.Context, wait time.Duration) (any, int, error) {
	b, err := t.NextBatch(ctx, wait)
	return b, len(b), err
}

// Input adds a step that reads src.
func Input[T any](f *Flow, name string, src Source[T]) Stream[T] {
	n := f.add(nil, name, kindInput)
	n.input = typedInput[T]{src}
	return Stream[T]{n}
}
