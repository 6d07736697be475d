// Package local runs a flow's recovery in one process: it adapts a
// recovery.Store (the partition files) to core.Recovery. A cluster of
// processes uses recovery/clustered instead.
package local

import (
	"context"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
)

// adapter lets core use a recovery.Store through core.Recovery.
type adapter struct{ st *recovery.Store }

var _ core.Recovery = adapter{}
var _ core.KeyHinter = adapter{}

func (a adapter) Begin(ctx context.Context, workers int) (core.RunInfo, error) {
	rp, err := a.st.Begin(ctx, workers)
	if err != nil {
		return core.RunInfo{}, err
	}
	var uid string
	if ps := a.st.Partitions(); len(ps) > 0 {
		uid = ps[0].FlowUID
	}
	ls := a.st.Lineage()
	return core.RunInfo{Execution: int(rp.Execution), StartEpoch: core.Epoch(rp.Epoch), Workers: workers, FlowUID: uid,
		Lineage: ls.Lineage.ID, LineageNote: ls.Note}, nil
}

func (a adapter) Load(ctx context.Context, below core.Epoch, fn func([]core.Loaded) error) error {
	return a.st.Load(ctx, recovery.Epoch(below), func(rows []recovery.Row) error {
		return fn(loadedRows(rows))
	})
}

// loadedRows converts a batch of rows for core (a new slice: batches of
// several partitions arrive at once).
func loadedRows(rows []recovery.Row) []core.Loaded {
	out := make([]core.Loaded, len(rows))
	for i, r := range rows {
		out[i] = core.Loaded{Step: core.StepID(r.Step), Key: core.StateKey(r.Key), Epoch: core.Epoch(r.Epoch), Value: r.Value}
	}
	return out
}

// KeyHint implements core.KeyHinter.
func (a adapter) KeyHint(ctx context.Context, below core.Epoch) (map[core.StepID]int64, error) {
	h, err := a.st.KeyHint(ctx, recovery.Epoch(below))
	if err != nil {
		return nil, err
	}
	out := make(map[core.StepID]int64, len(h))
	for id, n := range h {
		out[core.StepID(id)] = n
	}
	return out, nil
}

func (a adapter) Commit(ctx context.Context, w core.WorkerIndex, frontier core.Epoch, changes []core.Change) error {
	var r recovery.Row
	return a.st.CommitFunc(ctx, recovery.WorkerIndex(w), recovery.Epoch(frontier), len(changes), func(i int) *recovery.Row {
		c := &changes[i]
		r = recovery.Row{Step: recovery.StepID(c.Step), Key: recovery.StateKey(c.Key), Epoch: recovery.Epoch(c.Epoch), Value: c.Value}
		return &r
	})
}

func (a adapter) WaitDurable(ctx context.Context, frontier core.Epoch) error {
	return a.st.WaitDurable(ctx, recovery.Epoch(frontier))
}

func (a adapter) Close() error { return a.st.Close() }

// New adapts a recovery.Store to core.Recovery (and core.KeyHinter), for
// core.Run. The run owns it: core.Run closes it, and so the Store.
func New(st *recovery.Store) core.Recovery { return adapter{st} }
