package core_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/core"
)

// durableSink records the calls a DurableSink partition gets.
type durableSink struct {
	mu     *sync.Mutex
	events *[]string
	info   *core.RunInfo
}

func (d durableSink) Partitions(context.Context) ([]string, error) { return []string{"d"}, nil }
func (d durableSink) PartitionFor(core.KV[int64]) string           { return "d" }
func (d durableSink) Open(ctx context.Context, _ string, _ []byte) (core.SinkPartition[core.KV[int64]], error) {
	*d.info = core.RunInfoFrom(ctx)
	return d, nil
}
func (d durableSink) Write(context.Context, []core.KV[int64]) error { return nil }
func (d durableSink) log(s string) {
	d.mu.Lock()
	*d.events = append(*d.events, s)
	d.mu.Unlock()
}
func (d durableSink) Commit(_ context.Context, e core.Epoch) ([]byte, error) {
	d.log(fmt.Sprint("commit ", e))
	return nil, nil
}
func (d durableSink) Durable(_ context.Context, below core.Epoch) error {
	d.log(fmt.Sprint("durable ", below))
	return nil
}
func (d durableSink) Close(context.Context) error { d.log("close"); return nil }

// With recovery, a DurableSink hears which epochs are durable before each
// Commit (the epoch being committed: those below it are durable, so every
// epoch committed before is), and once
// more after the final epoch with all of them durable, before Close.
// Without recovery it hears nothing.
func TestDurableSink_HearsDurableEpochs(t *testing.T) {
	for _, withRec := range []bool{true, false} {
		var mu sync.Mutex
		var events []string
		var info core.RunInfo
		sink := durableSink{mu: &mu, events: &events, info: &info}
		cfg := core.Config{Workers: 2, EpochInterval: time.Millisecond}
		if withRec {
			cfg.Recovery = newMemRecovery()
		}
		res, err := core.Run(context.Background(), countFlow(genWords(2, 3000, 0), sink), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if info.Recovery != withRec {
			t.Fatalf("RunInfo.Recovery = %v with recovery %v", info.Recovery, withRec)
		}
		if !withRec {
			for _, e := range events {
				if !strings.HasPrefix(e, "commit ") && e != "close" {
					t.Fatalf("without recovery the sink heard %q", e)
				}
			}
			continue
		}
		commits, last := 0, core.Epoch(0)
		for i, e := range events {
			switch {
			case strings.HasPrefix(e, "commit "):
				commits++
				// Committing epoch E follows "every epoch below E is durable".
				if want := "durable " + strings.TrimPrefix(e, "commit "); i == 0 || events[i-1] != want {
					t.Fatalf("%q not preceded by %q: %v", e, want, events)
				}
			case e == "close":
				if want := fmt.Sprint("durable ", res.FinalEpoch+1); events[i-1] != want {
					t.Fatalf("before close: %q, want %q (every epoch durable): %v", events[i-1], want, events)
				}
			default:
				var b core.Epoch
				fmt.Sscanf(e, "durable %d", &b)
				if b < last {
					t.Fatalf("durable went back from %d to %d", last, b)
				}
				last = b
			}
		}
		if commits == 0 || events[len(events)-1] != "close" {
			t.Fatalf("events %v", events)
		}
	}
}
