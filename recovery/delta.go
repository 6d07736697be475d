package recovery

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
)

// This file is the partition side of incremental backups: the backup
// package builds delta files with CreateEmpty and InsertRows, and restore
// lays them over a base image with LayDelta.

// CreateEmpty creates a new SQLite file at path with the partition schema and
// no identity (no parts row), in rollback-journal mode so that closing it
// leaves a single file. Backups use it for deltas.
func CreateEmpty(ctx context.Context, path string) (*sql.DB, error) {
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("create %s: file exists", path)
	}
	db, err := open(path, true, "", "journal_mode(DELETE)", "synchronous(OFF)")
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// InsertRows writes snapshot rows in tx, replacing rows with the same key
// and epoch.
func InsertRows(ctx context.Context, tx *sql.Tx, rows []Row) error { return insertRows(ctx, tx, rows) }

// LayDelta lays a delta file (rows at or after watermark, dropped keys, the
// small tables; made by the backup package) over a restored base image db,
// without scanning the base: the base's changelog names its rows at or after
// the watermark (the watermark is never below the base's commit epoch), and
// the changelog left behind names every row at or after the delta's commit
// epoch, as GC and trim need.
func LayDelta(ctx context.Context, db *sql.DB, deltaPath string, watermark Epoch) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `ATTACH DATABASE ? AS d`, "file:"+deltaPath+"?mode=ro"); err != nil {
		return fmt.Errorf("open delta: %w", err)
	}
	defer conn.ExecContext(context.Background(), `DETACH DATABASE d`)
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	old, err := loggedKeys(ctx, tx, watermark, Epoch(1<<62))
	if err != nil {
		return fmt.Errorf("read base changelog: %w", err)
	}
	ks := make([]stepKey, 0, len(old))
	for k := range old {
		ks = append(ks, k)
	}
	if err := deleteKeys(ctx, tx, ks, "epoch >= ?", watermark); err != nil {
		return err
	}
	stmts := []string{
		`DELETE FROM main.changelog WHERE epoch >= ?1`,
		`INSERT OR REPLACE INTO main.snaps (step_id, state_key, epoch, ser) SELECT step_id, state_key, epoch, ser FROM d.snaps`,
		`INSERT OR IGNORE INTO main.snaps (step_id, state_key, epoch, ser) SELECT step_id, state_key, epoch, NULL FROM d.dropped`,
		`DELETE FROM main.dropped WHERE epoch >= ?1`,
		`INSERT OR REPLACE INTO main.dropped SELECT * FROM d.dropped`,
	}
	for _, t := range []string{"parts", "meta", "executions", "fronts", "epoch_times"} {
		stmts = append(stmts, `DELETE FROM main.`+t, `INSERT INTO main.`+t+` SELECT * FROM d.`+t)
	}
	for _, q := range stmts {
		var args []any
		if strings.Contains(q, "?1") {
			args = append(args, watermark)
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("apply delta: %w", err)
		}
	}
	// Log the delta's rows; drop log entries the delta's commit epoch passed.
	rows, err := tx.QueryContext(ctx, `SELECT step_id, state_key, epoch, ser IS NULL FROM d.snaps`)
	if err != nil {
		return err
	}
	byEpoch := map[Epoch][]Row{}
	for rows.Next() {
		var step, key string
		var e Epoch
		var tomb bool
		if err := rows.Scan(&step, &key, &e, &tomb); err != nil {
			rows.Close()
			return err
		}
		r := Row{Step: StepID(step), Key: StateKey(key), Epoch: e, Value: []byte{}}
		if tomb {
			r.Value = nil
		}
		byEpoch[e] = append(byEpoch[e], r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var seq int64
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM main.changelog`).Scan(&seq); err != nil {
		return err
	}
	for e, rs := range byEpoch {
		seq++
		if _, err := tx.ExecContext(ctx, `INSERT INTO main.changelog (epoch, seq, keys) VALUES (?, ?, ?)`, e, seq, encodeChangelog(rs)); err != nil {
			return err
		}
	}
	c, err := metaEpoch(ctx, tx, "commit_epoch")
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM main.changelog WHERE epoch < ?`, c); err != nil {
		return err
	}
	return tx.Commit()
}
