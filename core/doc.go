// Package core is flowkeep's dataflow runtime: the Flow API (steps, operators,
// windows), workers, epochs, the keyed exchange, and the source and sink
// contracts. Connectors live outside it (connect/...), built on those
// contracts alone; the TCP transport between the processes of a cluster is
// internal/mesh.
//
// # Model
//
// A Flow is a tree of named steps rooted at Input steps. Step ids are dotted
// paths "flow.step" and unique within a flow. Items move in batches; stateless
// steps (Map, FilterMap, FlatMap, KeyOn, Inspect) run where their input runs.
// Stateful steps (Stateful, StatefulMap, Reduce, Fold, TumblingFold) and
// Output steps are preceded by a keyed exchange: an item with key k is
// processed on worker KeyHash(k) mod W, where KeyHash is 64-bit FNV-1a over the
// key's UTF-8 bytes. FNV-1a is fixed by this package: it is stable across runs,
// processes and machines, so state found in a snapshot routes to the same worker
// as live items with the same key, and a resume with another W rescales.
//
// # Epochs
//
// Inputs close an epoch every snapshot interval and at end of input. Epochs are
// integers; a fresh flow starts at epoch 1 and numbering continues across
// executions. Every operator sees epoch boundaries in order. When an epoch
// closes at an operator, the operator hands the state it changed in that epoch
// (and only that: a delta) to the worker's ledger; a discarded key becomes a
// tombstone (nil value). When every component of a worker has closed epoch e,
// the ledger passes the changes to Recovery with frontier e+1, meaning "every
// epoch below e+1 is durable here once Commit returns". Recovery commits
// asynchronously, so the next epoch runs while the previous one is written.
//
// Epochs never hold output back: a sink makes what it is given visible at once
// (Write, or Flush when the flow goes idle; see Flusher), and Commit, when the
// epoch closes, only makes it durable. Exactly-once output into a file comes
// from the resume truncating it to the last durable position, not from
// waiting.
//
// Sources snapshot their read position (the position after the last item read)
// and sinks their write position (the position of the next write), keyed by
// partition name under the step id; partition p of a source or sink lives on
// worker KeyHash(p) mod W, exactly like state.
//
// At end of input (every source partition exhausted) the runtime declares the
// current epoch final: keyed operators run their end-of-input logic in it, it
// closes and is committed like any other, and the next execution starts at the
// epoch after it, so a later run continues where this one ended.
//
// This package never touches recovery files itself: it sees recovery only
// through the Recovery interface.
package core
