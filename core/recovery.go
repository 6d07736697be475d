package core

import (
	"context"
	"fmt"
	"github.com/flowkeep/flowkeep/model"
	"log"
)

// Change is one snapshot row: the state of (Step, Key) after epoch Epoch.
// A nil Value is a tombstone: the key was discarded.
type Change = model.Row

// Recovery is where a run keeps its snapshots. core defines it and the
// recovery package implements it; core never touches recovery files itself.
//
// Contract:
//   - Begin records a new execution of `workers` workers and returns its
//     number (0 for the first) and the epoch it starts at: 1 for a fresh flow,
//     else the resume epoch (the minimum over the last execution's workers of
//     their highest frontier). It fails
//     with an error that tells the user what to do when the partitions cannot
//     be resumed from.
//   - Load hands fn, in batches, every key whose newest row below `below`
//     is not a tombstone, with that row's epoch and value (which may be
//     empty: only a tombstone means "no state"). fn may be called
//     concurrently from several goroutines; a batch and its values are only
//     valid during the call, so fn copies what it keeps.
//   - Commit records changes and that worker w's frontier is now `frontier`
//     (every epoch below it is durable on w). It may return before the data is
//     durable, so the flow runs on while snapshots are written; commits of one
//     worker are applied in call order and each atomically per partition. An
//     error of an earlier asynchronous commit is returned by a later Commit
//     or by Close. A worker may commit changes of epochs at or after its
//     frontier early, in pieces, with its frontier unchanged: they count only
//     once a later commit moves the frontier past them (a resume below them
//     discards them). Commit does not keep changes, or the slices they hold,
//     after it returns.
//   - WaitDurable returns once every epoch below frontier is durable for
//     every worker of the run (in a cluster, of every process), or with an
//     error of an earlier commit. The runtime uses it to pace epochs: an
//     epoch closes only once the snapshot before it is durable, so at most
//     one epoch's snapshot waits to be written.
//   - Close waits until every accepted commit is durable, then releases the
//     partitions.
type Recovery interface {
	Begin(ctx context.Context, workers int) (RunInfo, error)
	Load(ctx context.Context, below Epoch, fn func(rows []Loaded) error) error
	Commit(ctx context.Context, w WorkerIndex, frontier Epoch, changes []Change) error
	WaitDurable(ctx context.Context, frontier Epoch) error
	Close() error
}

// StateReader is a Recovery that reads keyed state on demand. With it a
// run does not load the state of its stateful steps at resume: a key is
// read from its partition the first time the run needs it, so resume and
// continuation cost in proportion to the keys the run touches; and with
// Config.StateMemory the keys in memory are a cache over the partitions.
// Without it the runtime loads every key at resume (Load).
//
// Contract:
//   - OpenState is called instead of Load, once Begin returned and before
//     any Commit. It hands fn, as Load does, every row below `below` of
//     the steps for which lazy reports false (source and sink positions,
//     the runtime's rows, steps the flow no longer has), and makes the
//     state of the other (lazy) steps readable. With full set, every
//     commit from now on becomes readable too, once Written counts it;
//     without it ReadState and ScanState may see only the state as it was
//     below `below`, so the caller keeps in memory every key it changes.
//     It reports which lazy steps have state in the partitions (a step
//     without any needs no lookups).
//   - ReadState reads keys of a lazy step: for each key whose newest row
//     (of any epoch, including early pieces of epochs not yet durable) is
//     not a tombstone, fn gets the key's index in keys, the row's epoch and
//     its value (valid only during the call). Other keys are left out. It
//     may be called concurrently (by every worker).
//   - ScanState hands fn, in batches and in key order, every key of a lazy
//     step whose newest row is not a tombstone and (unless every) is of an
//     epoch after `after`, of the share of keys `share` names. Values
//     are valid only during the call.
//   - Written returns how many of worker w's Commit calls are readable:
//     a key whose last change went out in commit n may leave memory once
//     Written(w) >= n.
//   - WaitWritten waits until Written(w) >= n (or recovery failed, or
//     ctx ended).
//   - StateBytes is the memory recovery holds to serve reads (it counts
//     against Config.StateMemory).
type StateReader interface {
	OpenState(ctx context.Context, below Epoch, lazy func(StepID) bool, full bool, fn func([]Loaded) error) (map[StepID]bool, error)
	ReadState(ctx context.Context, step StepID, keys []StateKey, fn func(i int, epoch Epoch, value []byte) error) error
	ScanState(ctx context.Context, step StepID, after Epoch, every bool, share KeyShare, fn func([]Loaded) error) error
	Written(w WorkerIndex) uint64
	WaitWritten(ctx context.Context, w WorkerIndex, n uint64) error
	StateBytes() int64
}

// KeyShare names one worker's share of the keys: those WorkerFor maps to
// Worker among Workers. The zero KeyShare (Workers 0) is every key. It is
// a value, not a function, so that a recovery in a cluster can send it to
// the process that scans.
type KeyShare struct {
	Worker  WorkerIndex
	Workers int
}

// Has says whether key is in the share.
func (s KeyShare) Has(key StateKey) bool {
	return s.Workers == 0 || WorkerFor(string(key), s.Workers) == s.Worker
}

// RecoveryShutdowner is a Recovery whose Close can be bounded: Shutdown is
// Close that gives up, with an error, when ctx ends (what it could not
// finish may not be durable). The runtime bounds it when a run fails (a
// stuck disk must not hang the process's exit); a run that ends well
// always waits for Close.
type RecoveryShutdowner interface {
	Shutdown(ctx context.Context) error
}

// Loaded is one row Load hands over: the state of (Step, Key) as it was
// after Epoch.
type Loaded = model.Row

// KeyHinter is a Recovery that can tell, before Load, about how many keys
// each step's state will hold (so state maps are sized once, not grown).
type KeyHinter interface {
	KeyHint(ctx context.Context, below Epoch) (map[StepID]int64, error)
}

// RunInfo describes the execution that is starting.
type RunInfo struct {
	// Execution numbers the runs of a flow: 0, 1, 2, ...
	Execution int
	// StartEpoch is the epoch the run starts at (the resume epoch).
	StartEpoch Epoch
	// Workers is the number of workers of this run.
	Workers int
	// PreviousEnd is the final epoch of the last run that reached end of
	// input (0 if none): epochs after it belong to the current "pass" over
	// the input, even across crashes and resumes.
	PreviousEnd Epoch
	// Recovery says whether the run snapshots into recovery partitions
	// (connectors that promise exactly-once output need it).
	Recovery bool
	// FlowUID identifies the flow's recovery partitions (empty without
	// recovery): stable across runs, rescales and restores, and different
	// for another flow of the same name.
	FlowUID string
	// Lineage identifies the history the run writes (empty without
	// recovery): a restore, or files moved to another machine, start a new
	// one, so output a sink tags with it is judged only against its own
	// history. LineageNote, if set, says why the run started a new one.
	Lineage     string
	LineageNote string
}

// runtimeStep keys the runtime's own rows (the last end-of-input epoch).
const runtimeStep StepID = "$runtime"

type runInfoKey struct{}

// RunInfoFrom returns the RunInfo of the run whose context ctx is; sources
// and sinks get it in Open. Without recovery, Execution is 0 and StartEpoch 1.
func RunInfoFrom(ctx context.Context) RunInfo {
	ri, _ := ctx.Value(runInfoKey{}).(RunInfo)
	return ri
}

// WithRunInfo returns ctx carrying ri, as the runtime passes it to Open:
// for testing a connector outside a run.
func WithRunInfo(ctx context.Context, ri RunInfo) context.Context {
	return context.WithValue(ctx, runInfoKey{}, ri)
}

type warnKey struct{}

// Warnf tells the user of something a source or sink cannot fix and must
// not hide (Config.OnWarning; the standard logger without it). ctx is the
// one Open was given.
func Warnf(ctx context.Context, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if f, ok := ctx.Value(warnKey{}).(func(string)); ok {
		f(msg)
		return
	}
	log.Print("warning: " + msg)
}

// WithWarnings returns ctx sending Warnf to f: for testing a connector
// outside a run.
func WithWarnings(ctx context.Context, f func(string)) context.Context {
	return context.WithValue(ctx, warnKey{}, f)
}
