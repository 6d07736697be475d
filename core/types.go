package core

// Epoch numbers a span of input between two snapshots. A fresh flow starts
// at epoch 1; numbering continues across executions.
type Epoch uint64

// WorkerIndex identifies one of the W workers of an execution (0..W-1).
type WorkerIndex int

// StepID is the unique dotted path of a step, e.g. "wordcount.count".
type StepID string

// StateKey is the key operator state is kept under.
type StateKey string

// KV is an item with a routing key. KeyOn makes them; keyed operators consume them.
type KV[V any] struct {
	Key   string
	Value V
}

// FNV-1a 64-bit parameters. KeyHash must never change: snapshots written by
// one version are routed by the next.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// KeyHash is the stable hash used for routing keys to workers: 64-bit FNV-1a.
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
