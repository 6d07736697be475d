package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// formed dials a cluster of n processes over real TCP and fails the test
// unless every process joined; fails[i] hears process i's fail function.
func formed(t *testing.T, n int) ([]*Mesh, []chan error) {
	t.Helper()
	cfgs := configs(t, n, nil)
	fails := make([]chan error, n)
	ms, errs := make([]*Mesh, n), make([]error, n)
	var wg sync.WaitGroup
	for i, c := range cfgs {
		fails[i] = make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms[i], errs[i] = Dial(context.Background(), c, "test-run", func(err error) { fails[i] <- err })
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, m := range ms {
			if m != nil {
				wg.Add(1)
				go func() { defer wg.Done(); m.Close(context.Background(), nil) }()
			}
		}
		wg.Wait()
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("process %d: %v", i, err)
		}
	}
	return ms, fails
}

// within waits until cond holds, or fails the test saying what.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A handler blocked on one topic holds up neither the data and credit
// frames nor another topic from the same peer; once it is released its
// topic goes on, in order and complete (more messages than its queue holds
// were waiting: the reader waited for room, nothing was dropped).
func TestHandlers_BlockedTopicDoesNotStallTheConnection(t *testing.T) {
	for _, tc := range []struct {
		name string
		// after sends, from process 0, what must get through while
		// process 1's "slow" handler is blocked.
		after func(ctx context.Context, m *Mesh) error
	}{
		{"another topic", func(ctx context.Context, m *Mesh) error { return m.Send(ctx, 1, "fast", []byte("f")) }},
		{"a data frame", func(ctx context.Context, m *Mesh) error {
			return m.SendData(ctx, 1, DataHeader{Node: 1, Dst: 2, Kind: 3, Epoch: 4}, make([]byte, DataHeaderLen+5))
		}},
		{"a credit frame", func(ctx context.Context, m *Mesh) error { return m.SendCredit(ctx, 1, 1, 2, 3) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms, fails := formed(t, 2)
			ctx := context.Background()
			release := make(chan struct{})
			var mu sync.Mutex
			var slow []string
			var other atomic.Int32
			ms[1].Handle("slow", func(_ int, b []byte) error {
				<-release
				mu.Lock()
				slow = append(slow, string(b))
				mu.Unlock()
				return nil
			})
			ms[1].Handle("fast", func(int, []byte) error { other.Add(1); return nil })
			ms[1].HandleData(func(int, DataHeader, []byte) error { other.Add(1); return nil })
			ms[1].HandleCredit(func(int, uint16, uint32, uint32) error { other.Add(1); return nil })
			// The first message blocks the handler; the queue holds the
			// next topicQueueLen; the rest leave the reader waiting.
			var want []string
			for i := range topicQueueLen + 1 {
				want = append(want, fmt.Sprint(i))
				if err := ms[0].Send(ctx, 1, "slow", []byte(want[i])); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.after(ctx, ms[0]); err != nil {
				t.Fatal(err)
			}
			within(t, 5*time.Second, tc.name+" was not handled while the slow handler blocked", func() bool { return other.Load() == 1 })
			// Now past the queue's room: the reader waits, and nothing is lost.
			for i := topicQueueLen + 1; i < 2*topicQueueLen+10; i++ {
				want = append(want, fmt.Sprint(i))
				if err := ms[0].Send(ctx, 1, "slow", []byte(want[i])); err != nil {
					t.Fatal(err)
				}
			}
			close(release)
			within(t, 5*time.Second, "the slow topic did not catch up", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(slow) == len(want)
			})
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(slow, want) {
				t.Fatalf("slow topic handled %q, want %q in order", slow, want)
			}
			select {
			case err := <-fails[1]:
				t.Fatalf("process 1 failed: %v", err)
			default:
			}
		})
	}
}

// Each sender's messages of one topic are handled in the order sent, with
// several senders at once.
func TestHandlers_OrderPerSenderAndTopic(t *testing.T) {
	ms, _ := formed(t, 3)
	const n = 500
	var mu sync.Mutex
	got := map[int][]int{}
	ms[0].Handle("seq", func(from int, b []byte) error {
		var i int
		fmt.Sscan(string(b), &i)
		mu.Lock()
		got[from] = append(got[from], i)
		mu.Unlock()
		return nil
	})
	var wg sync.WaitGroup
	for _, m := range ms[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if err := m.Send(context.Background(), 0, "seq", []byte(fmt.Sprint(i))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	within(t, 5*time.Second, "not every message arrived", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got[1]) == n && len(got[2]) == n
	})
	for from, s := range got {
		if !slices.IsSorted(s) {
			t.Fatalf("messages from process %d handled out of order", from)
		}
	}
}

// Barrier (and Gather) still mean "every message sent before it to this
// process has been handled": N messages to slow handlers, then the
// barrier; when it returns on the receiver, all N were handled.
func TestHandlers_BarrierWaitsForEarlierHandlerWork(t *testing.T) {
	for _, tc := range []struct {
		name   string
		topics []string
		gather bool
	}{
		{"one slow topic", []string{"a"}, false},
		{"two slow topics", []string{"a", "b"}, false},
		{"gather after a slow topic", []string{"a"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms, _ := formed(t, 2)
			const n = 20
			var handled atomic.Int32
			for _, topic := range tc.topics {
				ms[1].Handle(topic, func(int, []byte) error {
					time.Sleep(3 * time.Millisecond)
					handled.Add(1)
					return nil
				})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			sent := make(chan error, 1)
			go func() {
				for i := range n {
					if err := ms[0].Send(ctx, 1, tc.topics[i%len(tc.topics)], nil); err != nil {
						sent <- err
						return
					}
				}
				var err error
				if tc.gather {
					_, err = ms[0].Gather(ctx, "g", []byte("x"))
				} else {
					err = ms[0].Barrier(ctx, "b")
				}
				sent <- err
			}()
			var err error
			if tc.gather {
				var got map[int][]byte
				got, err = ms[1].Gather(ctx, "g", []byte("y"))
				if err == nil && string(got[0]) != "x" {
					t.Fatalf("gathered %v", got)
				}
			} else {
				err = ms[1].Barrier(ctx, "b")
			}
			if err != nil {
				t.Fatal(err)
			}
			if h := handled.Load(); h != n {
				t.Fatalf("the barrier returned with %d of %d earlier messages handled", h, n)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A handler's error fails the run naming the peer, and nothing that peer
// sent after the refused message is acted on.
func TestHandlers_RefusedMessageFailsTheRunNamingThePeer(t *testing.T) {
	ms, fails := formed(t, 2)
	var mu sync.Mutex
	var got []string
	ms[1].Handle("t", func(_ int, b []byte) error {
		mu.Lock()
		got = append(got, string(b))
		mu.Unlock()
		if string(b) == "bad" {
			return errors.New("not now")
		}
		return nil
	})
	for _, p := range []string{"ok", "bad", "after"} {
		if err := ms[0].Send(context.Background(), 1, "t", []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-fails[1]:
		if !strings.Contains(err.Error(), "process 0 (") || !strings.Contains(err.Error(), "not now") {
			t.Fatalf("failed with %v, want the handler's error naming process 0", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the refused message did not fail the run")
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, []string{"ok", "bad"}) {
		t.Fatalf("handled %q, want nothing after the refused message", got)
	}
}

// Once Close has begun, every way of sending is refused with ErrClosed.
func TestClose_RefusesSends(t *testing.T) {
	ms, _ := formed(t, 2)
	go ms[1].Close(context.Background(), nil) // its goodbye ends process 0's wait for one
	if err := ms[0].Close(context.Background(), nil); err != nil {
		t.Fatalf("close: %v", err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		send func() error
	}{
		{"Send", func() error { return ms[0].Send(ctx, 1, "t", nil) }},
		{"Broadcast", func() error { return ms[0].Broadcast(ctx, "t", nil) }},
		{"SendData", func() error { return ms[0].SendData(ctx, 1, DataHeader{}, make([]byte, DataHeaderLen)) }},
		{"SendCredit", func() error { return ms[0].SendCredit(ctx, 1, 0, 0, 1) }},
		{"Barrier", func() error { return ms[0].Barrier(ctx, "b") }},
		{"Gather", func() error { _, err := ms[0].Gather(ctx, "g", nil); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.send(); !errors.Is(err, ErrClosed) {
				t.Fatalf("after Close: %v, want ErrClosed", err)
			}
		})
	}
	if err := ms[0].Close(context.Background(), nil); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// Close waits for a handler call in flight, but only until its context
// ends; it says so. Then no handler runs any more.
func TestClose_BoundedByContextWhenAHandlerIsStuck(t *testing.T) {
	ms, _ := formed(t, 2)
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	ms[1].Handle("stuck", func(int, []byte) error {
		close(entered)
		<-release
		return nil
	})
	if err := ms[0].Send(context.Background(), 1, "stuck", nil); err != nil {
		t.Fatal(err)
	}
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	err := ms[1].Close(ctx, nil)
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("Close took %v with a 300ms context", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "handlers still running") {
		t.Fatalf("Close: %v, want it to say a handler was still running when its context ended", err)
	}
}

// A peer that stops reading (its handler is stuck and its queue and the
// connection are full) cannot hold Close past its context.
func TestClose_BoundedByContextWhenAPeerIsStuck(t *testing.T) {
	ms, _ := formed(t, 2)
	release := make(chan struct{})
	defer close(release)
	ms[1].Handle("big", func(int, []byte) error { <-release; return nil })
	blocked := make(chan struct{})
	go func() {
		defer close(blocked)
		big := make([]byte, 64<<10)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			err := ms[0].Send(ctx, 1, "big", big)
			cancel()
			if err != nil {
				return // the connection is full: process 1 reads no more
			}
		}
	}()
	select {
	case <-blocked:
	case <-time.After(20 * time.Second):
		t.Fatal("sends never blocked")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	ms[0].Close(ctx, errors.New("giving up"))
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("Close took %v with a 300ms context and a stuck peer", took)
	}
}

// StopHandlers waits for the call in flight; no handler is called after
// it returns, while sends go on working.
func TestStopHandlers_WaitsForTheCallInFlightAndEndsHandling(t *testing.T) {
	ms, _ := formed(t, 2)
	entered := make(chan struct{}, 1)
	var running, calls atomic.Int32
	ms[1].Handle("t", func(int, []byte) error {
		calls.Add(1)
		running.Add(1)
		select {
		case entered <- struct{}{}:
		default:
		}
		time.Sleep(100 * time.Millisecond)
		running.Add(-1)
		return nil
	})
	for range 3 {
		if err := ms[0].Send(context.Background(), 1, "t", nil); err != nil {
			t.Fatal(err)
		}
	}
	<-entered
	if err := ms[1].StopHandlers(context.Background()); err != nil {
		t.Fatal(err)
	}
	if running.Load() != 0 {
		t.Fatal("StopHandlers returned while a handler ran")
	}
	n := calls.Load()
	if err := ms[0].Send(context.Background(), 1, "t", nil); err != nil {
		t.Fatal(err)
	}
	if err := ms[1].Send(context.Background(), 0, "other", nil); err != nil {
		t.Fatalf("a send after StopHandlers: %v", err)
	}
	time.Sleep(150 * time.Millisecond)
	if calls.Load() != n {
		t.Fatalf("%d handler calls after StopHandlers returned", calls.Load()-n)
	}
	if err := ms[1].Barrier(context.Background(), "b"); !errors.Is(err, ErrClosed) {
		t.Fatalf("a barrier after StopHandlers: %v, want ErrClosed", err)
	}
}

// The mesh's work is tied to the context given to Dial: once it ends, no
// handler runs and sends fail with its cause.
func TestDial_ContextEndsTheWork(t *testing.T) {
	cfgs := configs(t, 2, nil)
	ctx, cancel := context.WithCancelCause(context.Background())
	ms := make([]*Mesh, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, c := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx := context.Background()
			if i == 1 {
				dctx = ctx
			}
			ms[i], errs[i] = Dial(dctx, c, "test-run", func(error) {})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("process %d: %v", i, err)
		}
	}
	t.Cleanup(func() {
		go ms[0].Close(context.Background(), nil)
		ms[1].Close(context.Background(), nil)
	})
	var calls atomic.Int32
	ms[1].Handle("t", func(int, []byte) error { calls.Add(1); return nil })
	stop := errors.New("the run ended")
	cancel(stop)
	if err := ms[1].Send(context.Background(), 0, "t", nil); !errors.Is(err, stop) {
		t.Fatalf("send after the Dial context ended: %v, want its cause", err)
	}
	if err := ms[0].Send(context.Background(), 1, "t", nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if calls.Load() != 0 {
		t.Fatal("a handler ran after the Dial context ended")
	}
}
