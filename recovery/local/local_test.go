package local

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/connect/gen"
	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
)

// emptyCodec encodes the state of a key it has seen as zero bytes, as
// netip.Addr{}.MarshalBinary or a presence set does.
type emptyCodec struct{}

func (emptyCodec) Encode(*struct{}) ([]byte, error) { return []byte{}, nil }
func (emptyCodec) Decode([]byte) (*struct{}, error) { return &struct{}{}, nil }

type lines struct {
	mu  *sync.Mutex
	got *[]string
}

func (l lines) Partitions(context.Context) ([]string, error) { return []string{"mem"}, nil }
func (l lines) PartitionFor(string) string                   { return "mem" }
func (l lines) Open(context.Context, string, []byte) (core.SinkPartition[string], error) {
	return l, nil
}
func (l lines) Write(_ context.Context, items []string) error {
	l.mu.Lock()
	*l.got = append(*l.got, items...)
	l.mu.Unlock()
	return nil
}
func (l lines) Commit(context.Context, core.Epoch) ([]byte, error) { return nil, nil }
func (l lines) Close(context.Context) error                        { return nil }

// seenFlow says for each item whether its key had state before it.
func seenFlow(count int64, out lines) *core.Flow {
	f := core.NewFlow("seen")
	in := core.Input(f, "in", gen.Generator[string]{Parts: 1, Count: count, Make: func(_ int, i int64) string { return fmt.Sprint("k", i%3) }})
	kv := core.KeyOn(in, "key", func(s string) string { return s })
	st := core.Stateful(kv, "seen", core.KeyedLogic[string, struct{}, string]{
		Codec: emptyCodec{},
		OnItem: func(_ string, s *struct{}, _ string, emit func(string)) *struct{} {
			if s == nil {
				emit("new")
			} else {
				emit("seen")
			}
			return &struct{}{}
		},
	})
	core.Output(core.Map(st, "fmt", func(kv core.KV[string]) string { return kv.Key + "=" + kv.Value }), "out", out)
	return f
}

// State that encodes to zero bytes survives a resume: only a tombstone
// means "no state".
func TestRecovery_ZeroLengthStateSurvivesResume(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := recovery.Init(ctx, dir, 2); err != nil {
		t.Fatal(err)
	}
	run := func(count int64) []string {
		st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "seen", Intervals: recovery.Intervals{Snapshot: time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		out := lines{mu: &sync.Mutex{}, got: new([]string)}
		if _, err := core.Run(ctx, seenFlow(count, out), core.Config{Workers: 2, EpochInterval: time.Second, Recovery: New(st)}); err != nil {
			t.Fatal(err)
		}
		sort.Strings(*out.got)
		return *out.got
	}
	if got := strings.Join(run(3), " "); got != "k0=new k1=new k2=new" {
		t.Fatalf("first run: %s", got)
	}
	if got := strings.Join(run(6), " "); got != "k0=seen k1=seen k2=seen" {
		t.Fatalf("after resume: %s (a zero-length state was lost)", got)
	}
}

// closeCounter is a Recovery whose Begin fails.
type closeCounter struct{ closed int }

func (c *closeCounter) Begin(context.Context, int) (core.RunInfo, error) {
	return core.RunInfo{}, errors.New("begin failed")
}
func (c *closeCounter) Load(context.Context, core.Epoch, func([]core.Loaded) error) error {
	return nil
}
func (c *closeCounter) Commit(context.Context, core.WorkerIndex, core.Epoch, []core.Change) error {
	return nil
}
func (c *closeCounter) WaitDurable(context.Context, core.Epoch) error { return nil }
func (c *closeCounter) Close() error                                  { c.closed++; return nil }

// Run owns its Recovery: a run that fails to begin still closes it.
func TestRun_ClosesRecoveryWhenBeginFails(t *testing.T) {
	out := lines{mu: &sync.Mutex{}, got: new([]string)}
	rec := &closeCounter{}
	if _, err := core.Run(context.Background(), seenFlow(3, out), core.Config{Workers: 1, Recovery: rec}); err == nil {
		t.Fatal("run succeeded")
	}
	if rec.closed != 1 {
		t.Fatalf("recovery closed %d times", rec.closed)
	}
	rec = &closeCounter{}
	if _, err := core.Run(context.Background(), seenFlow(3, out), core.Config{Workers: 0, Recovery: rec}); err == nil || rec.closed != 1 {
		t.Fatalf("bad config: err %v, closed %d times", err, rec.closed)
	}
}
