// Package recovery keeps a flow's snapshots in SQLite recovery partitions and
// computes where a run resumes. It must never lose a committed epoch, and it
// must never return state that mixes epochs.
//
// # Files
//
// `flowrun recovery init DIR N` creates part-0.sqlite3 … part-(N-1).sqlite3
// in an existing DIR. A partition is the set part-N.sqlite3, its -wal and its
// -shm, moved together. Files are found by content, not by name: every
// *.sqlite3 file in DIR whose `parts` table holds a row is a partition. N is
// fixed for the life of the flow. All partitions of one flow share a random
// flow uid made at init; the flow's name is stored at its first run, and
// partitions of another uid or name are refused.
//
// Journal mode is WAL with synchronous=FULL; tables are STRICT; the schema
// version is PRAGMA user_version and migrations (schema.go) move a file
// forward one version at a time.
//
// # Schema (version 1)
//
//	parts(part_index, part_count, flow_uid, created_unix_ms)   one row
//	meta(key, value)         flow_name, commit_epoch, snapshot_interval_ms, backup_interval_ms
//	executions(ex_num, worker_count, resume_epoch, started_unix_ms, snapshot_interval_ms, backup_interval_ms)
//	fronts(ex_num, worker_index, frontier)                     highest frontier per worker
//	snaps(step_id, state_key, epoch, ser)                      ser NULL is a tombstone; PK (step_id, state_key, epoch)
//	changelog(epoch, seq, keys)                                which keys each commit wrote at epoch (see below)
//	epoch_times(epoch, unix_ms)                                when this partition's frontier reached epoch
//	dropped(step_id, state_key, epoch, unix_ms)                keys whose tombstone GC removed (for incremental backups)
//
// A snapshot row for (step, key) lives in partition FNV-1a-64(step "\x00" key)
// mod N.
//
// # Resume
//
// Each run is an execution 0, 1, 2 … recording its worker count and resume
// epoch. A worker's frontier f means "every epoch below f is durable here";
// rows and the frontier of one commit are written in one transaction per
// partition. The resume epoch is the minimum, over every partition and over
// the last execution's workers, of their highest frontier; a worker that never
// reported (or a partition that never saw the last execution) counts as that
// execution's resume epoch. A fresh flow starts at epoch 1. On resume each key
// gets its newest row below the resume epoch (tombstones mean "no state"), in
// one ordered scan of each partition's primary key; rows at or after the
// resume epoch are deleted first (they belong to epochs that run again).
//
// # Garbage collection
//
// With s the snapshot interval, b the backup interval and d = ceil(b/s)
// (d = 0 when b = 0): once every partition has committed frontier F (epoch
// e = F-1 is durable everywhere), each partition sets its commit epoch to
// C = F-d, the lowest epoch it can still resume from. It keeps, per key, its
// newest row below C (at or before e-d) plus every newer row, and drops a
// tombstone that is a key's newest row below C. Only keys with rows in
// [old C, new C) are touched: every commit appends, per epoch, one changelog
// row listing the keys it wrote (a compact blob: a step table, then per key
// the step's index, the key and a tombstone flag), and GC reads the
// changelog of the collectable epochs instead of an index on snaps. That
// keeps each snapshot row to one B-tree insert. Changelog rows below C are
// deleted with the GC that consumed them; resume deletes those at or after
// the resume epoch together with their rows. Backups of different partitions taken up to
// about b apart therefore still share a resume epoch. Old executions'
// frontiers are deleted when a new execution starts.
//
// A partition's restorable epoch range is [commit epoch, its own resume
// epoch]: resuming from any epoch in it loses nothing. Resuming from an epoch
// below a partition's commit epoch fails with ErrTooOld.
package recovery
