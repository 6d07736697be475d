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
var _ core.StateReader = adapter{}

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
	return core.RunInfo{Execution: int(rp.Execution), StartEpoch: rp.Epoch, Workers: workers, FlowUID: uid,
		Lineage: ls.Lineage.ID, LineageNote: ls.Note}, nil
}

func (a adapter) Load(ctx context.Context, below core.Epoch, fn func([]core.Loaded) error) error {
	return a.st.Load(ctx, below, fn)
}

// OpenState implements core.StateReader.
func (a adapter) OpenState(ctx context.Context, below core.Epoch, lazy func(core.StepID) bool, full bool, fn func([]core.Loaded) error) (map[core.StepID]bool, error) {
	info, err := a.st.OpenState(ctx, below, lazy, full, fn)
	return info.Steps, err
}

// ReadState implements core.StateReader.
func (a adapter) ReadState(ctx context.Context, step core.StepID, keys []core.StateKey, fn func(int, core.Epoch, []byte) error) error {
	return a.st.ReadState(ctx, step, keys, fn)
}

// ScanState implements core.StateReader.
func (a adapter) ScanState(ctx context.Context, step core.StepID, after core.Epoch, every bool, share core.KeyShare, fn func([]core.Loaded) error) error {
	return a.st.ScanState(ctx, step, after, every, share.Has, fn)
}

// Written implements core.StateReader.
func (a adapter) Written(w core.WorkerIndex) uint64 { return a.st.Written(w) }

// WaitWritten implements core.StateReader.
func (a adapter) WaitWritten(ctx context.Context, w core.WorkerIndex, n uint64) error {
	return a.st.WaitWritten(ctx, w, n)
}

// StateBytes implements core.StateReader.
func (a adapter) StateBytes() int64 { return a.st.StateBytes() }

// KeyHint implements core.KeyHinter.
func (a adapter) KeyHint(ctx context.Context, below core.Epoch) (map[core.StepID]int64, error) {
	return a.st.KeyHint(ctx, below)
}

func (a adapter) Commit(ctx context.Context, w core.WorkerIndex, frontier core.Epoch, changes []core.Change) error {
	return a.st.Commit(ctx, w, frontier, changes)
}

func (a adapter) WaitDurable(ctx context.Context, frontier core.Epoch) error {
	return a.st.WaitDurable(ctx, frontier)
}

func (a adapter) Close() error { return a.st.Close() }

// Shutdown implements core.RecoveryShutdowner.
func (a adapter) Shutdown(ctx context.Context) error { return a.st.Shutdown(ctx) }

// New adapts a recovery.Store to core.Recovery (and core.KeyHinter and
// core.StateReader), for
// core.Run. The run owns it: core.Run closes it, and so the Store.
func New(st *recovery.Store) core.Recovery { return adapter{st} }
