package core_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/flowkeep/flowkeep/connect/gen"
	"github.com/flowkeep/flowkeep/core"
)

// countingCodec counts the states it encodes.
type countingCodec struct{ n *atomic.Int64 }

func (c countingCodec) Encode(s *int64) ([]byte, error) { c.n.Add(1); return json.Marshal(s) }
func (c countingCodec) Decode(b []byte) (*int64, error) {
	var v int64
	return &v, json.Unmarshal(b, &v)
}

// Snapshots are for recovery: a run without it encodes no state at all,
// whatever the epochs; one with it encodes what changed.
func TestStateful_WithoutRecoveryEncodesNothing(t *testing.T) {
	for _, withRecovery := range []bool{false, true} {
		var encoded atomic.Int64
		f := core.NewFlow("e")
		lines := core.Input(f, "in", gen.Generator[string]{Parts: 2, Count: 5000, Make: func(p int, i int64) string { return strings.Repeat("k", int(i%50)+1) }})
		kv := core.Map(lines, "kv", func(s string) core.KV[int64] { return core.KV[int64]{Key: s, Value: 1} })
		sum := core.Stateful(kv, "sum", core.KeyedLogic[int64, int64, int64]{
			OnItem: func(_ string, st *int64, v int64, emit func(int64)) *int64 {
				if st == nil {
					st = new(int64)
				}
				*st += v
				return st
			},
			Codec: countingCodec{&encoded},
		})
		out := newCollect[core.KV[int64]]()
		core.Output(sum, "out", out)
		cfg := core.Config{Workers: 2, EpochInterval: 1}
		if withRecovery {
			cfg.Recovery = newMemRecovery()
		}
		if _, err := core.Run(context.Background(), f, cfg); err != nil {
			t.Fatal(err)
		}
		if got := encoded.Load(); (got > 0) != withRecovery {
			t.Fatalf("recovery %v: %d states encoded", withRecovery, got)
		}
	}
}
