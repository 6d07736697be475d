package core_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/internal/freeport"
	"github.com/flowkeep/flowkeep/internal/mesh"
	"github.com/flowkeep/flowkeep/internal/meshtest"
)

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs, err := freeport.Addrs(n)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

// runCluster runs the flow built by mk as procs processes (goroutines here,
// real TCP between them) of w workers each, sharing secret if it is set.
func runCluster(t *testing.T, procs, w int, secret string, mk func() (*core.Flow, func() map[string]int64)) (map[string]int64, []error) {
	t.Helper()
	addrs := freeAddrs(t, procs)
	got := map[string]int64{}
	errs := make([]error, procs)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for p := 0; p < procs; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			f, result := mk()
			_, err := core.Run(context.Background(), f, core.Config{Workers: w, EpochInterval: 5 * time.Millisecond,
				Cluster: &core.ClusterConfig{ProcessID: p, Addresses: addrs, ConnectTimeout: 10 * time.Second, Secret: []byte(secret)}})
			errs[p] = err
			mu.Lock()
			for k, v := range result() {
				if _, dup := got[k]; dup {
					t.Errorf("key %s written by two processes", k)
				}
				got[k] = v
			}
			mu.Unlock()
		}(p)
	}
	wg.Wait()
	return got, errs
}

func TestCluster_FoldMatchesOneProcess(t *testing.T) {
	sink := newCollect[core.KV[int64]]()
	if _, err := core.Run(context.Background(), countFlow(genWords(3, 20000, 0), sink), core.Config{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	want := toMap(sink.get())
	for _, shape := range []struct {
		procs, w int
		secret   string // with one, every frame is sealed
	}{{2, 1, ""}, {2, 2, ""}, {3, 1, ""}, {3, 2, "s3cret"}} {
		got, errs := runCluster(t, shape.procs, shape.w, shape.secret, func() (*core.Flow, func() map[string]int64) {
			s := newCollect[core.KV[int64]]()
			return countFlow(genWords(3, 20000, 0), s), func() map[string]int64 { return toMap(s.get()) }
		})
		for p, err := range errs {
			if err != nil {
				t.Fatalf("%dx%d (secret %q): process %d: %v", shape.procs, shape.w, shape.secret, p, err)
			}
		}
		if !maps.Equal(got, want) {
			t.Fatalf("%dx%d (secret %q): counts differ from one process (%d vs %d keys)", shape.procs, shape.w, shape.secret, len(got), len(want))
		}
	}
}

func TestCluster_MismatchedFlagsRefused(t *testing.T) {
	addrs := freeAddrs(t, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for p := 0; p < 2; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			_, errs[p] = core.Run(context.Background(), countFlow(genWords(1, 10, 0), newCollect[core.KV[int64]]()),
				core.Config{Workers: 1 + p, Cluster: &core.ClusterConfig{ProcessID: p, Addresses: addrs, ConnectTimeout: 3 * time.Second}})
		}(p)
	}
	wg.Wait()
	if errs[0] == nil || errs[1] == nil || !strings.Contains(fmt.Sprint(errs), "same flow, -w and addresses") {
		t.Fatalf("errors: %v", errs)
	}
}

func TestCluster_LostPeerStopsPromptlyNamingIt(t *testing.T) {
	addrs := freeAddrs(t, 2)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	ctx1, kill1 := context.WithCancel(context.Background())
	began := time.Now()
	for p := 0; p < 2; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			ctx := context.Background()
			if p == 1 {
				ctx = ctx1
			}
			src := genWords(2, 1_000_000, time.Millisecond)
			_, errs[p] = core.Run(ctx, countFlow(src, newCollect[core.KV[int64]]()), core.Config{Workers: 1,
				Cluster: &core.ClusterConfig{ProcessID: p, Addresses: addrs, ConnectTimeout: 5 * time.Second}})
		}(p)
	}
	time.Sleep(300 * time.Millisecond)
	kill1()
	wg.Wait()
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "process 1") {
		t.Fatalf("process 0: %v", errs[0])
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Fatalf("took %v to notice", d)
	}
}

// startRelayed starts a 2-process cluster run of countFlow whose
// connection from process 0 to process 1 goes through an on-path relay
// that passes every frame through tamper; it returns each process's error.
func startRelayed(t *testing.T, secret string, tamper meshtest.Tamper) []error {
	t.Helper()
	addrs := freeAddrs(t, 2)
	relay := meshtest.Start(t, addrs[1], tamper)
	dialed := []string{addrs[0], relay.Addr} // process 1 listens on addrs[1]
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for p := 0; p < 2; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			c := &core.ClusterConfig{ProcessID: p, Addresses: dialed, ConnectTimeout: 5 * time.Second, Secret: []byte(secret)}
			if p == 1 {
				c.Listen = addrs[1]
			}
			_, errs[p] = core.Run(context.Background(), countFlow(genWords(2, 200_000, 0), newCollect[core.KV[int64]]()),
				core.Config{Workers: 1, EpochInterval: 5 * time.Millisecond, Cluster: c})
		}(p)
	}
	wg.Wait()
	return errs
}

// injectBeforeFirstData is a relay that slips frame into the connection
// from process 0 to process 1 just before the first data frame (type 3):
// both processes are then running, their exchanges set up.
func injectBeforeFirstData(frame []byte) meshtest.Tamper {
	var once sync.Once
	return func(d meshtest.Dir, i int, f []byte) [][]byte {
		out := [][]byte{f}
		if d == meshtest.Forward && len(f) > 0 && f[0] == 3 {
			once.Do(func() { out = [][]byte{frame, f} })
		}
		return out
	}
}

// A credit frame naming a step that is not an exchange (here the input,
// node 0) used to crash the receiving process with an index out of range
// on its reader goroutine; now it fails the run with an error naming the
// peer.
func TestCluster_CreditForAStepThatIsNotAnExchangeFailsTheRun(t *testing.T) {
	credit := []byte{4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1} // node 0, worker 0, 1 credit
	errs := startRelayed(t, "", injectBeforeFirstData(credit))
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "process 0") || !strings.Contains(errs[1].Error(), "credit") {
		t.Fatalf("process 1: %v", errs[1])
	}
	if errs[0] == nil {
		t.Fatal("process 0 finished although process 1 failed")
	}
	t.Logf("process 0: %v\nprocess 1: %v", errs[0], errs[1])
}

// With a cluster secret the same frame, slipped in by a relay that does not
// hold it, fails authentication: the run stops before acting on it.
func TestCluster_InjectedFrameFailsAuthenticationWithASecret(t *testing.T) {
	credit := []byte{4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	var once sync.Once
	errs := startRelayed(t, "s3cret", func(d meshtest.Dir, i int, f []byte) [][]byte {
		out := [][]byte{f}
		if d == meshtest.Forward && i >= 6 { // past the handshake (hello, proof) and the first barriers
			once.Do(func() { out = [][]byte{credit, f} })
		}
		return out
	})
	if !errors.Is(errs[1], mesh.ErrFrameAuth) || !strings.Contains(errs[1].Error(), "process 0") {
		t.Fatalf("process 1: %v", errs[1])
	}
	if errs[0] == nil {
		t.Fatal("process 0 finished although process 1 failed")
	}
	t.Logf("process 0: %v\nprocess 1: %v", errs[0], errs[1])
}
