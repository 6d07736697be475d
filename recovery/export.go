package recovery

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"sort"
)

// Find opens every partition in dir (found by content) without checking that
// they form a complete set: a machine of a cluster may hold only some.
// It refuses partitions of different flows in one directory.
func Find(ctx context.Context, dir string, readOnly bool) ([]*Partition, error) {
	ps, err := discoverAny(ctx, dir, readOnly)
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		if p.FlowUID != ps[0].FlowUID {
			closeAll(ps)
			return nil, fmt.Errorf("%w in %s: %s belongs to flow %s but %s to flow %s; keep one flow's partitions per directory",
				ErrForeignFlow, dir, ps[0].Path, ps[0].FlowUID, p.Path, p.FlowUID)
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Index < ps[j].Index })
	return ps, nil
}

// CreateEmpty creates a new SQLite file at path with the partition schema and
// no identity (no parts row), in rollback-journal mode so that closing it
// leaves a single file. Backups use it for deltas.
func CreateEmpty(ctx context.Context, path string) (*sql.DB, error) {
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("create %s: file exists", path)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(DELETE)&_pragma=synchronous(OFF)")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// InsertRows writes snapshot rows in tx, replacing rows with the same key
// and epoch.
func InsertRows(ctx context.Context, tx *sql.Tx, rows []Row) error { return insertRows(ctx, tx, rows) }

// Close closes every partition.
func CloseAll(ps []*Partition) { closeAll(ps) }

// RebuildChangelog recreates the changelog from the rows at or after the
// commit epoch (one full scan). Restores use it after laying a delta over a
// base image, so GC and resume find every row they must.
func RebuildChangelog(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	c, err := metaEpoch(ctx, tx, "commit_epoch")
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM changelog`); err != nil {
		return err
	}
	rows, err := tx.QueryContext(ctx, `SELECT step_id, state_key, epoch, ser IS NULL FROM snaps WHERE epoch >= ?`, max(c, 1))
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
	for e, rs := range byEpoch {
		if _, err := tx.ExecContext(ctx, `INSERT INTO changelog (epoch, seq, keys) VALUES (?, 1, ?)`, e, encodeChangelog(rs)); err != nil {
			return err
		}
	}
	return tx.Commit()
}
