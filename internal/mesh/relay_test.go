package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/freeport"
	"github.com/flowkeep/flowkeep/internal/meshtest"
)

// relayedPair is two processes whose one connection (process 0 dials
// process 1) runs through an on-path relay.
type relayedPair struct {
	ms     [2]*Mesh
	failed [2]chan error // what each process's fail function was told
	mu     sync.Mutex
	got    [2][]string // "hi" payloads each process handled
}

func (r *relayedPair) handled(p int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got[p])
}

// startRelayed connects process 0 to process 1 through a relay that passes
// every frame through tamper.
func startRelayed(t *testing.T, secret string, tamper meshtest.Tamper) *relayedPair {
	t.Helper()
	addrs, err := freeport.Addrs(2)
	if err != nil {
		t.Fatal(err)
	}
	relay := meshtest.Start(t, addrs[1], tamper)
	r := &relayedPair{failed: [2]chan error{make(chan error, 1), make(chan error, 1)}}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range 2 {
		cfg := Config{Self: i, Addresses: []string{addrs[0], relay.Addr}, ConnectTimeout: 5 * time.Second, Secret: []byte(secret)}
		if i == 1 {
			cfg.Listen = addrs[1]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.ms[i], errs[i] = Dial(context.Background(), cfg, "test-run", func(err error) { r.failed[i] <- err })
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("process %d: %v", i, err)
		}
	}
	for i, m := range r.ms {
		m.Handle("hi", func(_ int, b []byte) error {
			r.mu.Lock()
			r.got[i] = append(r.got[i], string(b))
			r.mu.Unlock()
			return nil
		})
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, m := range r.ms {
			wg.Add(1)
			go func() { defer wg.Done(); m.Close(context.Background(), nil) }()
		}
		wg.Wait()
	})
	return r
}

// send sends each payload under "hi" from process from to the other one.
func (r *relayedPair) send(t *testing.T, from int, payloads ...string) {
	t.Helper()
	for _, p := range payloads {
		if err := r.ms[from].Send(context.Background(), 1-from, "hi", []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
}

// failure waits for process p's fail function.
func (r *relayedPair) failure(t *testing.T, p int) error {
	t.Helper()
	select {
	case err := <-r.failed[p]:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("process %d did not fail", p)
		return nil
	}
}

// handshakeFrames is how many frames each end sends before its first
// sealed one with a secret: its hello and its proof.
const handshakeFrames = 2

// hiFrame is a "hi" message as an attacker without the keys would write it:
// the mesh's frame in the clear.
func hiFrame(payload string) []byte {
	return append(append([]byte{frameTopic, 2}, "hi"...), payload...)
}

// Everything an on-path relay without the secret does to the frames after
// the handshake (inject, change, replay, reorder, drop) ends the connection
// with an authentication error naming the peer, and nothing from the
// tampered frame on is handled.
func TestSeal_RelayTamperingEndsTheConnection(t *testing.T) {
	type tamperer func(dir meshtest.Dir, i int, f []byte) [][]byte
	onForward := func(fn func(i int, f []byte) [][]byte) tamperer {
		return func(dir meshtest.Dir, i int, f []byte) [][]byte {
			if dir != meshtest.Forward || i < handshakeFrames {
				return [][]byte{f}
			}
			return fn(i-handshakeFrames, f)
		}
	}
	var held []byte // the swap's first frame (Forward only: one goroutine)
	for _, tc := range []struct {
		name   string
		tamper tamperer
		// firstHandled says whether the first message ("one") may be
		// handled: only when the tampering comes after it.
		firstHandled bool
		victim       int // the process whose reader sees the tampering
	}{
		{"inject a frame", onForward(func(i int, f []byte) [][]byte {
			if i == 0 {
				return [][]byte{hiFrame("evil"), f}
			}
			return [][]byte{f}
		}), false, 1},
		{"inject a frame later", onForward(func(i int, f []byte) [][]byte {
			if i == 1 {
				return [][]byte{hiFrame("evil"), f}
			}
			return [][]byte{f}
		}), true, 1},
		{"flip a byte", onForward(func(i int, f []byte) [][]byte {
			if i == 0 {
				f[len(f)/2] ^= 0x20
			}
			return [][]byte{f}
		}), false, 1},
		{"flip a byte of the tag", onForward(func(i int, f []byte) [][]byte {
			if i == 0 {
				f[len(f)-1] ^= 1
			}
			return [][]byte{f}
		}), false, 1},
		{"replay a frame", onForward(func(i int, f []byte) [][]byte {
			if i == 0 {
				return [][]byte{f, slices.Clone(f)}
			}
			return [][]byte{f}
		}), true, 1},
		{"swap two frames", onForward(func(i int, f []byte) [][]byte {
			switch i {
			case 0:
				held = f
				return nil
			case 1:
				return [][]byte{f, held}
			}
			return [][]byte{f}
		}), false, 1},
		{"drop a frame", onForward(func(i int, f []byte) [][]byte {
			if i == 0 {
				return nil
			}
			return [][]byte{f}
		}), false, 1},
		{"flip a byte the other way", func(dir meshtest.Dir, i int, f []byte) [][]byte {
			if dir == meshtest.Backward && i == handshakeFrames {
				f[len(f)/2] ^= 0x20
			}
			return [][]byte{f}
		}, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelayed(t, "s3cret", meshtest.Tamper(tc.tamper))
			from := 1 - tc.victim
			r.send(t, from, "one", "two", "three")
			err := r.failure(t, tc.victim)
			if !errors.Is(err, ErrFrameAuth) || !strings.Contains(err.Error(), fmt.Sprintf("process %d (", from)) {
				t.Fatalf("process %d failed with %v, want an authentication error naming process %d", tc.victim, err, from)
			}
			got := r.handled(tc.victim)
			want := []string(nil)
			if tc.firstHandled {
				want = []string{"one"}
			}
			// A ping may come first and take the tampering, so "one" may
			// be missing even when it could have been handled; nothing
			// else may be there.
			if !slices.Equal(got, want) && len(got) != 0 {
				t.Fatalf("process %d handled %q, want %q", tc.victim, got, want)
			}
			t.Logf("process %d: %v", tc.victim, err)
		})
	}
}

// The same relay without a secret: the injected frame is handled (the
// relay really does inject, and this is what the secret prevents).
func TestSeal_WithoutSecretAnInjectedFrameIsHandled(t *testing.T) {
	r := startRelayed(t, "", func(dir meshtest.Dir, i int, f []byte) [][]byte {
		if dir == meshtest.Forward && i == 1 { // after the hello
			return [][]byte{hiFrame("evil"), f}
		}
		return [][]byte{f}
	})
	r.send(t, 0, "one")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if got := r.handled(1); slices.Contains(got, "evil") {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process 1 handled %q, want the injected %q", r.handled(1), "evil")
}

// An untouched relay changes nothing: sealed frames go both ways.
func TestSeal_FramesFlowThroughAFaithfulRelay(t *testing.T) {
	r := startRelayed(t, "s3cret", nil)
	var want []string
	for i := range 300 {
		want = append(want, strings.Repeat("x", i*97))
	}
	r.send(t, 0, want...)
	r.send(t, 1, "back")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && (len(r.handled(1)) < len(want) || len(r.handled(0)) < 1) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := r.handled(1); !slices.Equal(got, want) {
		t.Fatalf("process 1 handled %d messages, want %d in order", len(got), len(want))
	}
	if got := r.handled(0); !slices.Equal(got, []string{"back"}) {
		t.Fatalf("process 0 handled %q", got)
	}
	select {
	case err := <-r.failed[0]:
		t.Fatalf("process 0 failed: %v", err)
	case err := <-r.failed[1]:
		t.Fatalf("process 1 failed: %v", err)
	default:
	}
}
