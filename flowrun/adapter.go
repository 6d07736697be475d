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

func (a recoveryAdapter) Load(ctx context.Context, below core.Epoch, fn func(core.StepID, core.StateKey, []byte) error) error {
	return a.st.Load(ctx, recovery.Epoch(below), func(r recovery.Row) error {
		return fn(core.StepID(r.Step), core.StateKey(r.Key), r.Value)
	})
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
