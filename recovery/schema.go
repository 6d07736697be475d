package recovery

import (
	"context"
	"database/sql"
	"fmt"
)

// SchemaVersion is the version this package writes (PRAGMA user_version).
const SchemaVersion = 1

// migrations[v] moves a file from version v to v+1.
var migrations = []string{
	0: `
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
`,
}

// migrate brings db to SchemaVersion. A file newer than this package is
// refused rather than misread.
func migrate(ctx context.Context, db *sql.DB) error {
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > SchemaVersion {
		return fmt.Errorf("schema version %d is newer than this flowkeep (%d): upgrade flowkeep", v, SchemaVersion)
	}
	for ; v < SchemaVersion; v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
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
