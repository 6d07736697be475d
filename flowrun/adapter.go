package flowrun

import (
	"context"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
)

// recoveryAdapter lets core use a recovery.Store through core.Recovery.
type recoveryAdapter struct{ st *recovery.Store }

var _ core.Recovery = recoveryAdapter{}

func (a recoveryAdapter) Begin(ctx context.Context, workers int) (core.RunInfo, error) {
	rp, err := a.st.Begin(ctx, workers)
	if err != nil {
		return core.RunInfo{}, err
	}
	return core.RunInfo{Execution: int(rp.Execution), StartEpoch: core.Epoch(rp.Epoch), Workers: workers}, nil
}

func (a recoveryAdapter) Load(ctx context.Context, below core.Epoch, fn func([]core.Loaded) error) error {
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
func (a recoveryAdapter) KeyHint(ctx context.Context, below core.Epoch) (map[core.StepID]int64, error) {
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

func (a recoveryAdapter) Commit(ctx context.Context, w core.WorkerIndex, frontier core.Epoch, changes []core.Change) error {
	var r recovery.Row
	return a.st.CommitFunc(ctx, recovery.WorkerIndex(w), recovery.Epoch(frontier), len(changes), func(i int) *recovery.Row {
		c := &changes[i]
		r = recovery.Row{Step: recovery.StepID(c.Step), Key: recovery.StateKey(c.Key), Epoch: recovery.Epoch(c.Epoch), Value: c.Value}
		return &r
	})
}

func (a recoveryAdapter) WaitDurable(ctx context.Context, frontier core.Epoch) error {
	return a.st.WaitDurable(ctx, recovery.Epoch(frontier))
}

func (a recoveryAdapter) Close() error { return a.st.Close() }

// NewRecovery adapts a recovery.Store to core.Recovery, for programs that
// run flows with core.Run directly.
func NewRecovery(st *recovery.Store) core.Recovery { return recoveryAdapter{st} }
