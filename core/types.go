package core

import "github.com/flowkeep/flowkeep/model"

// The domain types are model's (shared with recovery and backup).
type (
	// Epoch numbers a span of input between two snapshots. A fresh flow
	// starts at epoch 1; numbering continues across executions.
	Epoch = model.Epoch
	// WorkerIndex identifies one of the W workers of an execution (0..W-1).
	WorkerIndex = model.WorkerIndex
	// StepID is the unique dotted path of a step, e.g. "wordcount.count".
	StepID = model.StepID
	// StateKey is the key operator state is kept under.
	StateKey = model.StateKey
)

// KV is an item with a routing key. KeyOn makes them; keyed operators consume them.
type KV[V any] struct {
	Key   string
	Value V
}

// KeyHash is the stable hash used for routing keys to workers: 64-bit
// FNV-1a (model.KeyHash).
func KeyHash(key string) uint64 { return model.KeyHash(key) }

// WorkerFor returns the worker that owns key among w workers.
func WorkerFor(key string, w int) WorkerIndex { return model.WorkerFor(key, w) }
