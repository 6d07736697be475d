package recovery

import (
	"errors"
	"time"
)

// Epoch numbers a span of input between snapshots; a fresh flow starts at 1.
type Epoch uint64

// ExecutionNumber numbers the runs of a flow: 0, 1, 2 …
type ExecutionNumber int64

// WorkerIndex identifies a worker of an execution.
type WorkerIndex int

// PartitionIndex identifies a partition: 0..PartitionCount-1.
type PartitionIndex int

// PartitionCount is the fixed number of partitions of a flow.
type PartitionCount int

// StepID is a step's dotted id.
type StepID string

// StateKey is the key state is kept under.
type StateKey string

// Row is one snapshot row. A nil Value is a tombstone.
type Row struct {
	Step  StepID
	Key   StateKey
	Epoch Epoch
	Value []byte
}

// Sentinel errors a caller can act on. Messages wrapping them say what to do.
var (
	ErrNoPartitions      = errors.New("no recovery partitions")
	ErrMissingPartitions = errors.New("missing recovery partitions")
	ErrMixedPartitions   = errors.New("mixed partition counts")
	ErrForeignFlow       = errors.New("partitions of another flow")
	ErrTooOld            = errors.New("partition too old to resume from")
	ErrAlreadyInit       = errors.New("directory already holds recovery partitions")
	// ErrCorrupt marks a partition file that is not what it claims to be.
	ErrCorrupt = errors.New("corrupt recovery partition")
)

// Intervals are the flow's snapshot and backup intervals.
type Intervals struct {
	Snapshot time.Duration `json:"snapshot_ns"`
	Backup   time.Duration `json:"backup_ns"`
}

// D is ceil(b/s): how many epochs of history GC keeps beyond the durable one.
func (iv Intervals) D() Epoch {
	if iv.Backup <= 0 || iv.Snapshot <= 0 {
		return 0
	}
	return Epoch((iv.Backup + iv.Snapshot - 1) / iv.Snapshot)
}

// PartitionFor returns the partition holding (step, key) among n:
// FNV-1a-64 over step, a zero byte, and key.
func PartitionFor(step StepID, key StateKey, n PartitionCount) PartitionIndex {
	return partitionAfter(stepHash(step), key, n)
}

// stepHash is FNV-1a-64 over step and the zero separator: the state
// PartitionFor continues from for every key of the step.
func stepHash(step StepID) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(step); i++ {
		h ^= uint64(step[i])
		h *= 1099511628211
	}
	return h * 1099511628211 // the zero separator: h ^= 0 is a no-op
}

func partitionAfter(h uint64, key StateKey, n PartitionCount) PartitionIndex {
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return PartitionIndex(h % uint64(n))
}
