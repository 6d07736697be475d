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

// A split acquisition gives its parts back separately: the first part's
// bytes are free again while the rest is still held, and each part given
// back twice counts once.
func TestBudget_AcquireSplitGivesPartsBackSeparately(t *testing.T) {
	ctx := context.Background()
	b := NewBudget(minMemory)
	first, rest, err := b.AcquireSplit(ctx, minMemory, minMemory/2)
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
	first()
	first()
	if !tryAcquire(minMemory / 2) {
		t.Fatal("the first part was given back, yet its bytes were not let in")
	}
	if tryAcquire(minMemory/2 + 1) {
		t.Fatal("more than the first part was let in while the rest is held")
	}
	rest()
	if !tryAcquire(minMemory) {
		t.Fatal("both parts were given back, yet the budget is not whole")
	}
}
