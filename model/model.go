// Package model holds the domain types every layer of flowkeep shares:
// epochs, workers, steps, state keys, partitions and snapshot rows, and
// the stable hashes that place keys on workers and partitions. core (the
// runtime), recovery (the partition files) and backup use these types, so
// no layer converts another's.
//
// The hashes are part of the on-disk contract: snapshots written by one
// version are routed and partitioned by the next, so they never change.
package model

// Epoch numbers a span of input between two snapshots. A fresh flow starts
// at epoch 1; numbering continues across executions.
type Epoch uint64

// ExecutionNumber numbers the runs of a flow: 0, 1, 2 …
type ExecutionNumber int64

// WorkerIndex identifies one of the W workers of an execution (0..W-1).
type WorkerIndex int

// PartitionIndex identifies a recovery partition: 0..PartitionCount-1.
type PartitionIndex int

// PartitionCount is the fixed number of recovery partitions of a flow.
type PartitionCount int

// StepID is the unique dotted path of a step, e.g. "wordcount.count".
type StepID string

// StateKey is the key operator state is kept under.
type StateKey string

// Row is one snapshot row: the state of a key of a step as of an epoch. A
// nil Value is a tombstone (the key was discarded).
type Row struct {
	Step  StepID
	Key   StateKey
	Epoch Epoch
	Value []byte
}

// FNV-1a 64-bit parameters.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// KeyHash is the stable hash that routes keys to workers: 64-bit FNV-1a.
func KeyHash(key string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= fnvPrime64
	}
	return h
}

// WorkerFor returns the worker that owns key among w workers.
func WorkerFor(key string, w int) WorkerIndex {
	return WorkerIndex(KeyHash(key) % uint64(w))
}

// PartitionFor returns the partition holding (step, key) among n:
// FNV-1a-64 over step, a zero byte, and key.
func PartitionFor(step StepID, key StateKey, n PartitionCount) PartitionIndex {
	return PartitionAfter(StepHash(step), key, n)
}

// StepHash is FNV-1a-64 over step and the zero separator: the state
// PartitionFor continues from for every key of the step (callers that
// place many keys of one step hash it once).
func StepHash(step StepID) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(step); i++ {
		h ^= uint64(step[i])
		h *= fnvPrime64
	}
	return h * fnvPrime64 // the zero separator: h ^= 0 is a no-op
}

// PartitionAfter is PartitionFor from a step's StepHash.
func PartitionAfter(h uint64, key StateKey, n PartitionCount) PartitionIndex {
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= fnvPrime64
	}
	return PartitionIndex(h % uint64(n))
}
