// Package recovery keeps a flow's snapshots in SQLite recovery partitions and
// computes where a run resumes. It must never lose a committed epoch, and it
// must never return state that mixes epochs.
//
// # Files
//
// `flowrun recovery init DIR N` creates part-0.sqlite3 … part-(N-1).sqlite3
// in an existing DIR; `flowrun run … --init-partitions N` does the same on a
// first start (no partitions in its directories) and nothing later. In a
// cluster each process creates its share (partition i on process i mod P)
// under one flow uid the processes agreed on (process 0's proposal), so
// that together they make one flow (Init, CreatePartitions, PlanInit). A partition is the set part-N.sqlite3, its -wal and its
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
// # Schema (version 2)
//
//	parts(part_index, part_count, flow_uid, created_unix_ms)   one row
//	meta(key, value)         flow_name, commit_epoch, compacted_epoch, compaction_checked, snapshot_interval_ms, backup_interval_ms,
//	                         lineage (JSON), lineage_pending, machine_id, file_id, runs (JSON) (see lineage.go)
//	executions(ex_num, worker_count, resume_epoch, started_unix_ms, snapshot_interval_ms, backup_interval_ms)
//	fronts(ex_num, worker_index, frontier)                     highest frontier per worker
//	steps(num, step_id, keys)                                  a number per step, in order of first use; keys: base rows, as last counted
//	segments(seq, epoch, entries, data)                        one changelog segment per commit and epoch
//	base(k, epoch, ser)                                        per key, its newest value below compacted_epoch; PK k
//	epoch_times(epoch, unix_ms)                                when this partition's frontier reached epoch
//	dropped(k, epoch, unix_ms)                                 keys whose tombstone compaction applied (for incremental backups)
//	passlog(seq, epoch, entries, data)                         what this execution's compactions merged, as segments (see passlog.go)
//
// A key k is uvarint(step number) followed by the state key's bytes; keys
// sort bytewise, in base and in segments alike. A snapshot row for (step,
// key) lives in partition FNV-1a-64(step "\x00" key) mod N.
//
// Storage is write-optimised. Each commit writes, per epoch, one segment:
// the partition's changed keys of that epoch, sorted by k, each with its
// value or a tombstone, in one BLOB (segment.go). The writer merges the
// commits of one transaction into one segment per epoch, and cuts one
// larger than about 1 MiB at a key into several of that epoch (disjoint
// keys, in order: the same changes), so its buffers do not grow with the
// epoch. Only NULL-free framing is
// used: a zero-length value is a value; only a tombstone means "no state".
// So a snapshot costs in proportion to the bytes that changed, not one
// B-tree operation per key. Commit encodes the rows at once and queues them
// for the partitions' writers; it waits while more than
// Options.MaxPendingBytes (DefaultMaxPendingBytes, 256 MiB) of earlier
// commits are queued.
//
// # Resume
//
// Each run is an execution 0, 1, 2 … recording its worker count and resume
// epoch. A worker's frontier f means "every epoch below f is durable here";
// segments and the frontier of one commit are written in one transaction
// per partition. The resume epoch is the minimum, over every partition and
// over the last execution's workers, of their highest frontier; a worker
// that never reported (or a partition that never saw the last execution)
// counts as that execution's resume epoch. A fresh flow starts at epoch 1.
// On resume the segments at or after the resume epoch are deleted (one
// range delete: those epochs run again), and each key gets its newest state
// below the resume epoch: the base, scanned in k order, merged with the
// segments below the resume epoch (the newest epoch wins; a tombstone means
// no state).
//
// # Lineages
//
// Every partition names its lineage, the history it belongs to (meta
// lineage: id, host, creation, fork epoch, ancestors with the epoch up to
// which each agrees). init starts the root, whose id is the flow uid (a
// partition without the key is of the root). A restore writes a child
// forked at the restored epoch, pending until a run adopts it; a run on
// files whose machine id or device:inode differ from what the last run
// recorded (machine_id, file_id) starts a child at its resume epoch. A run
// refuses partitions of two lineages. See StartLineage. Each partition also
// keeps its last MaxRuns (64) runs (meta runs: number, resume epoch, random
// id), so two histories of one lineage are told apart.
//
// # Garbage collection and compaction
//
// With s the snapshot interval, b the backup interval and d = ceil(b/s)
// (d = 0 when b = 0): once every partition has committed frontier F (epoch
// e = F-1 is durable everywhere), each partition sets its commit epoch to
// C = F-d, the lowest epoch it can still resume from, and keeps, per key,
// its newest state below C plus every newer change. Moving C touches no
// state. Every few epochs (Options.CompactEvery, default max(16, d)),
// compaction merges the segments below C into the base (one upsert per key
// changed since the last compaction, in key order; a tombstone deletes the
// key and records it in dropped, which remembers it for DroppedRetention (72
// hours) so that an incremental backup over an older image removes it too),
// then deletes those segments with one range delete and records
// compacted_epoch. It runs in slices of at most 20000 keys between commits, so
// durability never waits for more than one slice; until it ends, base and
// segments together still hold exactly the same state, and a compaction cut
// short starts again. Backups of different partitions taken up to about b
// apart therefore still share a resume epoch. Old executions' frontiers are
// deleted when a new execution starts.
//
// A partition's restorable epoch range is [commit epoch, its own resume
// epoch]: resuming from any epoch in it loses nothing. Resuming from an epoch
// below a partition's commit epoch fails with ErrTooOld. Trim (restore) to
// an epoch in the range is a range delete of segments.
//
// # Migrations
//
// Version 1 kept one row per key and epoch (snaps) and a changelog of keys;
// the migration to version 2 (on the first writable open) collapses each
// key's rows below the commit epoch into its base row and turns the rows at
// or after it into segments. Images of version 1 (old backups) are migrated
// when restored, and version-1 deltas are laid over them.
package recovery
