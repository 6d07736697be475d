package recovery

import (
	"errors"
	"github.com/flowkeep/flowkeep/model"
	"time"
)

// The domain types are model's (shared with core and backup).
type (
	// Epoch numbers a span of input between snapshots; a fresh flow starts at 1.
	Epoch = model.Epoch
	// ExecutionNumber numbers the runs of a flow: 0, 1, 2 …
	ExecutionNumber = model.ExecutionNumber
	// WorkerIndex identifies a worker of an execution.
	WorkerIndex = model.WorkerIndex
	// PartitionIndex identifies a partition: 0..PartitionCount-1.
	PartitionIndex = model.PartitionIndex
	// PartitionCount is the fixed number of partitions of a flow.
	PartitionCount = model.PartitionCount
	// StepID is a step's dotted id.
	StepID = model.StepID
	// StateKey is the key state is kept under.
	StateKey = model.StateKey
	// Row is one snapshot row. A nil Value is a tombstone.
	Row = model.Row
)

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
// FNV-1a-64 over step, a zero byte, and key (model.PartitionFor).
func PartitionFor(step StepID, key StateKey, n PartitionCount) PartitionIndex {
	return model.PartitionFor(step, key, n)
}

// stepHash and partitionAfter split PartitionFor for callers that place
// many keys of one step.
func stepHash(step StepID) uint64 { return model.StepHash(step) }

func partitionAfter(h uint64, key StateKey, n PartitionCount) PartitionIndex {
	return model.PartitionAfter(h, key, n)
}
