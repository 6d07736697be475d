package recovery

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Trim makes the partition resume exactly at epoch e: it deletes the
// segments at or after e (one range delete) and records a marker execution
// `ex` with no workers and resume epoch e (which, by the resume rule, pins
// the partition's frontier to e). Restore uses it on every restored
// partition with the same e and ex. e must lie in the partition's
// restorable range. A partition of an older schema is migrated first.
func Trim(ctx context.Context, db *sql.DB, e Epoch, ex ExecutionNumber, now time.Time) error {
	if err := migrate(ctx, db); err != nil {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	v, err := ReadView(ctx, tx)
	if err != nil {
		return err
	}
	if e < v.Lo() || e > v.Hi() {
		return fmt.Errorf("trim partition %d to epoch %d: outside its restorable range [%d, %d]", v.Index, e, v.Lo(), v.Hi())
	}
	if last := v.Last(); last != nil && last.Number >= ex {
		return fmt.Errorf("trim partition %d: marker execution %d is not after its last execution %d", v.Index, ex, last.Number)
	}
	iv := v.Intervals
	if err := trimFrom(ctx, tx, e); err != nil {
		return fmt.Errorf("trim partition %d to epoch %d: %w", v.Index, e, err)
	}
	for _, st := range []struct {
		q    string
		args []any
	}{
		{`INSERT OR IGNORE INTO epoch_times (epoch, unix_ms) SELECT ?1, unix_ms FROM epoch_times WHERE epoch >= ?1 ORDER BY epoch LIMIT 1`, []any{e}},
		{`DELETE FROM epoch_times WHERE epoch > ?`, []any{e}},
		{`DELETE FROM fronts`, nil},
		{`INSERT INTO executions (ex_num, worker_count, resume_epoch, started_unix_ms, snapshot_interval_ms, backup_interval_ms) VALUES (?, 0, ?, ?, ?, ?)`,
			[]any{ex, e, unixMs(now), iv.Snapshot.Milliseconds(), iv.Backup.Milliseconds()}},
	} {
		if _, err := tx.ExecContext(ctx, st.q, st.args...); err != nil {
			return fmt.Errorf("trim partition %d to epoch %d: %w", v.Index, e, err)
		}
	}
	return tx.Commit()
}

// trimFrom deletes every change at or after epoch e: the segments of those
// epochs (the base only holds epochs below the commit epoch, and e is never
// below it).
func trimFrom(ctx context.Context, tx *sql.Tx, e Epoch) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM segments WHERE epoch >= ?`, int64(e))
	return err
}

// Migrate brings a partition file opened with OpenDB or OpenScratchDB to
// the current schema (OpenPartition does it for writable partitions).
func Migrate(ctx context.Context, db *sql.DB) error { return migrate(ctx, db) }
