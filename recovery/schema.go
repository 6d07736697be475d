package recovery

import (
	"context"
	"database/sql"
	"fmt"
)

// SchemaVersion is the version this package writes (PRAGMA user_version).
const SchemaVersion = 2

// migrations[v] moves a file from version v to v+1, inside a transaction.
var migrations = []func(ctx context.Context, tx *sql.Tx) error{
	0: execAll(schemaV1),
	1: migrate1to2,
}

// schemaV1 is the first schema: one row per key and epoch (see
// migrate1to2 for how its rows become version 2's).
const schemaV1 = `
CREATE TABLE parts (
	part_index INTEGER NOT NULL,
	part_count INTEGER NOT NULL,
	flow_uid TEXT NOT NULL,
	created_unix_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE meta (
	key TEXT PRIMARY KEY,
	value TEXT NOT NULL
) STRICT;
CREATE TABLE executions (
	ex_num INTEGER PRIMARY KEY,
	worker_count INTEGER NOT NULL,
	resume_epoch INTEGER NOT NULL,
	started_unix_ms INTEGER NOT NULL,
	snapshot_interval_ms INTEGER NOT NULL,
	backup_interval_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE fronts (
	ex_num INTEGER NOT NULL,
	worker_index INTEGER NOT NULL,
	frontier INTEGER NOT NULL,
	PRIMARY KEY (ex_num, worker_index)
) STRICT;
CREATE TABLE snaps (
	step_id TEXT NOT NULL,
	state_key TEXT NOT NULL,
	epoch INTEGER NOT NULL,
	ser BLOB,
	PRIMARY KEY (step_id, state_key, epoch)
) STRICT, WITHOUT ROWID;
CREATE TABLE changelog (
	epoch INTEGER NOT NULL,
	seq INTEGER NOT NULL,
	keys BLOB NOT NULL,
	PRIMARY KEY (epoch, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE epoch_times (
	epoch INTEGER PRIMARY KEY,
	unix_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE dropped (
	step_id TEXT NOT NULL,
	state_key TEXT NOT NULL,
	epoch INTEGER NOT NULL,
	unix_ms INTEGER NOT NULL,
	PRIMARY KEY (step_id, state_key, epoch)
) STRICT, WITHOUT ROWID;
`

// schemaV2Tables are the state tables version 2 adds (see the package doc).
const schemaV2Tables = `
CREATE TABLE steps (
	num INTEGER PRIMARY KEY,
	step_id TEXT NOT NULL UNIQUE,
	keys INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE base (
	k BLOB PRIMARY KEY,
	epoch INTEGER NOT NULL,
	ser BLOB NOT NULL
) STRICT, WITHOUT ROWID;
CREATE TABLE segments (
	seq INTEGER PRIMARY KEY,
	epoch INTEGER NOT NULL,
	entries INTEGER NOT NULL,
	data BLOB NOT NULL
) STRICT;
CREATE INDEX segments_by_epoch ON segments (epoch);
CREATE TABLE dropped (
	k BLOB PRIMARY KEY,
	epoch INTEGER NOT NULL,
	unix_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
`

func execAll(q string) func(context.Context, *sql.Tx) error {
	return func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, q)
		return err
	}
}

// migrate brings db to SchemaVersion. A file newer than this package is
// refused rather than misread.
func migrate(ctx context.Context, db *sql.DB) error {
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if err := notNewer(v); err != nil {
		return err
	}
	for ; v < SchemaVersion; v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := migrations[v](ctx, tx); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
	}
	return nil
}

// notNewer refuses a file of a schema newer than this package's.
func notNewer(v int) error {
	if v > SchemaVersion {
		return fmt.Errorf("schema version %d is newer than this flowkeep (%d): upgrade flowkeep", v, SchemaVersion)
	}
	return nil
}

// SchemaOf returns a partition file's schema version.
func SchemaOf(ctx context.Context, q queryer) (int, error) {
	var v int
	err := q.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v)
	return v, err
}

// migrate1to2 turns version 1's rows (snaps: one row per key and epoch;
// changelog) into version 2's base and segments: per key, the newest row
// below the commit epoch becomes its base row (a tombstone, no row), and
// every row at or after the commit epoch goes into that epoch's segment.
// Resume, trim and the restorable range read the same state before and
// after.
func migrate1to2(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `ALTER TABLE dropped RENAME TO dropped_v1`); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, schemaV2Tables); err != nil {
		return err
	}
	c, err := metaEpoch(ctx, tx, "commit_epoch")
	if err != nil {
		return err
	}
	c = max(c, 1)
	steps := &stepTable{byID: map[StepID]uint64{}}
	rows, err := tx.QueryContext(ctx, `SELECT step_id FROM snaps GROUP BY step_id UNION SELECT step_id FROM dropped_v1 ORDER BY 1`)
	if err != nil {
		return err
	}
	var names []StepID
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return err
		}
		names = append(names, StepID(s))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, s := range names {
		if _, err := steps.add(ctx, tx, s); err != nil {
			return err
		}
	}
	// One ordered pass: per key, rows below c collapse into the base;
	// rows at or after c are kept per epoch.
	base := newBaseWriter(tx)
	later := map[Epoch][]entry{}
	var curK []byte
	var have bool
	var cur entry
	flush := func() error {
		if have && !cur.tomb {
			if err := base.upsert(ctx, cur.k, cur.epoch, cur.val); err != nil {
				return err
			}
		}
		have = false
		return nil
	}
	// ser IS NULL, not a nil []byte, tells a tombstone: the driver scans a
	// zero-length BLOB (a value) as nil too.
	rows, err = tx.QueryContext(ctx, `SELECT step_id, state_key, epoch, ser, ser IS NULL FROM snaps ORDER BY step_id, state_key, epoch`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var step, key string
		var e Epoch
		var ser []byte
		var tomb bool
		if err := rows.Scan(&step, &key, &e, &ser, &tomb); err != nil {
			rows.Close()
			return err
		}
		num, _ := steps.num(StepID(step))
		k := appendKey(nil, num, StateKey(key))
		if !bytesEqual(k, curK) {
			if err := flush(); err != nil {
				rows.Close()
				return err
			}
			curK = k
		}
		en := entry{k: k, epoch: e, tomb: tomb, val: ser}
		if en.val == nil && !en.tomb {
			en.val = []byte{}
		}
		if e < c {
			cur, have = en, true
			continue
		}
		later[e] = append(later[e], en)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if err := base.flush(ctx); err != nil {
		return err
	}
	for e, es := range later {
		if err := insertSegment(ctx, tx, e, sortEntries(es)); err != nil {
			return err
		}
	}
	rows, err = tx.QueryContext(ctx, `SELECT step_id, state_key, max(epoch), max(unix_ms) FROM dropped_v1 GROUP BY step_id, state_key`)
	if err != nil {
		return err
	}
	var drops []entry
	var dropMs []int64
	for rows.Next() {
		var step, key string
		var e Epoch
		var ms int64
		if err := rows.Scan(&step, &key, &e, &ms); err != nil {
			rows.Close()
			return err
		}
		num, _ := steps.num(StepID(step))
		drops = append(drops, entry{k: appendKey(nil, num, StateKey(key)), epoch: e})
		dropMs = append(dropMs, ms)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for i, d := range drops {
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO dropped (k, epoch, unix_ms) VALUES (?, ?, ?)`, d.k, d.epoch, dropMs[i]); err != nil {
			return err
		}
	}
	for _, q := range []string{
		`DROP TABLE snaps`, `DROP TABLE changelog`, `DROP TABLE dropped_v1`,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	if err := setMeta(ctx, tx, "compacted_epoch", uint64(c)); err != nil {
		return err
	}
	return countStepKeys(ctx, tx)
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }
