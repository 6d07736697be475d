package backup

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The budget never lets more bytes in at once than its size, a request
// larger than the whole budget still goes through (alone), and a cancelled
// wait returns.
func TestBudget_BoundsBytesInFlight(t *testing.T) {
	b := NewBudget(3 * minMemory)
	var in, peak atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			n := int64(minMemory)
			if i == 7 {
				n = 10 * minMemory // capped at the budget
			}
			release, err := b.Acquire(context.Background(), n)
			if err != nil {
				t.Error(err)
				return
			}
			now := in.Add(min(n, b.Bytes()))
			for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
			}
			time.Sleep(time.Millisecond)
			in.Add(-min(n, b.Bytes()))
			release()
			release() // twice is once
		}(i)
	}
	wg.Wait()
	if peak.Load() > b.Bytes() {
		t.Fatalf("%d bytes in at once, budget %d", peak.Load(), b.Bytes())
	}
	hold, _ := b.Acquire(context.Background(), b.Bytes())
	defer hold()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := b.Acquire(ctx, 1); err == nil {
		t.Fatal("acquired from a full budget")
	}
	var nilBudget *Budget
	if r, err := nilBudget.Acquire(context.Background(), 1<<40); err != nil || r == nil {
		t.Fatal("a nil budget must bound nothing")
	}
}

// A share gives its bytes back in parts as what it stands for shrinks:
// what it keeps stays held, the rest is free again at once, and giving
// back twice counts once.
func TestBudget_ShareGivesBackWhatItNoLongerKeeps(t *testing.T) {
	ctx := context.Background()
	b := NewBudget(workMemory)
	sh, err := b.Take(ctx, workMemory)
	if err != nil {
		t.Fatal(err)
	}
	tryAcquire := func(n int64) bool {
		c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		r, err := b.Acquire(c, n)
		if err != nil {
			return false
		}
		r()
		return true
	}
	if tryAcquire(1) {
		t.Fatal("the whole budget is held, yet a byte was let in")
	}
	sh.Keep(workMemory / 4)
	sh.Keep(workMemory / 2) // keeps no more than it held
	if !tryAcquire(workMemory - workMemory/4) {
		t.Fatal("the share kept a quarter, yet the rest was not let in")
	}
	if tryAcquire(workMemory - workMemory/4 + 1) {
		t.Fatal("more than the share gave back was let in")
	}
	sh.Done()
	sh.Done()
	if !tryAcquire(workMemory) {
		t.Fatal("the share was given back, yet the budget is not whole")
	}
}

// Chunks are built one budget's worth at a time: with room for one, a
// second build waits until the first is built; a larger budget builds
// several at once.
func TestBudget_BuildsWhatTheBudgetCanFinish(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		memory int64
		at     int
	}{{DefaultMemory, 1}, {4 * workMemory, 2}, {1 << 30, 1 << 30 / (2 * workMemory)}} {
		b := NewBudget(tc.memory)
		var done []func()
		for i := 0; i < tc.at; i++ {
			d, err := b.Build(ctx)
			if err != nil {
				t.Fatal(err)
			}
			done = append(done, d)
		}
		c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		if _, err := b.Build(c); err == nil {
			t.Fatalf("%d MiB: build %d was let in", tc.memory>>20, tc.at+1)
		}
		cancel()
		done[0]()
		done[0]()
		d, err := b.Build(ctx)
		if err != nil {
			t.Fatalf("%d MiB: a build ended, yet the next waits: %v", tc.memory>>20, err)
		}
		d()
	}
}
