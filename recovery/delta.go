package recovery

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"sort"
	"strings"
)

// This file is the partition side of incremental backups. A delta at
// watermark W is a small SQLite file (this schema) holding every change a
// partition has at or after W: its segments of epochs at or after W, its
// base rows of epochs at or after W (segments compacted since), the keys
// dropped at or after W, and the small tables (parts, meta, executions,
// fronts, epoch_times, steps). Laid over an image of the same partition
// taken when its frontier was at least W, it gives the partition's state
// for every epoch of its restorable range: nothing below W changes after W
// except by compaction, which only moves changes from segments into the
// base and drops tombstoned keys (kept in dropped for DroppedRetention).

// CreateEmpty creates a new SQLite file at path with the partition schema and
// no identity (no parts row), in rollback-journal mode so that closing it
// leaves a single file.
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

// ChangesSince counts the changes a delta at watermark w would hold: base
// rows of epochs at or after w plus segment entries at or after w. q reads
// the partition (a read transaction, for a consistent count).
func ChangesSince(ctx context.Context, q queryer, w Epoch) (int64, error) {
	var base, seg int64
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM base WHERE epoch >= ?`, int64(w)).Scan(&base); err != nil {
		return 0, err
	}
	if err := q.QueryRowContext(ctx, `SELECT coalesce(sum(entries), 0) FROM segments WHERE epoch >= ?`, int64(w)).Scan(&seg); err != nil {
		return 0, err
	}
	return base + seg, nil
}

// WriteDelta writes the delta at watermark w of the partition q reads (a
// read transaction) into a new file at path, and returns how many changes
// it holds.
func WriteDelta(ctx context.Context, q queryer, w Epoch, path string) (int64, error) {
	db, err := CreateEmpty(ctx, path)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	for _, t := range []struct{ table, where string }{
		{"parts", ""}, {"meta", ""}, {"executions", ""}, {"fronts", ""}, {"epoch_times", ""}, {"steps", ""},
		{"dropped", " WHERE epoch >= ?"}, {"segments", " WHERE epoch >= ?"}, {"base", " WHERE epoch >= ?"},
	} {
		if err := copyTable(ctx, q, tx, t.table, t.where, int64(w)); err != nil {
			return 0, fmt.Errorf("delta: copy %s: %w", t.table, err)
		}
	}
	n, err := ChangesSince(ctx, tx, w)
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return n, db.Close()
}

// copyTable copies src's table (rows matching where, its ? bound to arg)
// into dst's table of the same name and columns, in batches.
func copyTable(ctx context.Context, src queryer, dst *sql.Tx, table, where string, arg int64) error {
	var args []any
	if where != "" {
		args = append(args, arg)
	}
	rows, err := src.QueryContext(ctx, "SELECT * FROM "+table+where, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return err
	}
	const batch = 64
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	ins := func(n int) string {
		return "INSERT OR REPLACE INTO " + table + " VALUES " + strings.TrimSuffix(strings.Repeat(one+", ", n), ", ")
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var pending []any
	n := 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		_, err := dst.ExecContext(ctx, ins(n), pending...)
		pending, n = pending[:0], 0
		return err
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		for _, v := range vals {
			if b, ok := v.([]byte); ok {
				v = append([]byte{}, b...) // the driver may reuse it
			}
			pending = append(pending, v)
		}
		if n++; n == batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return flush()
}

// LayDelta lays a delta file (made by WriteDelta, or a version-1 delta of
// an earlier flowkeep) over a restored image db of the same partition,
// already at this schema: the image's segments at or after the watermark
// go, the delta's changes come in (dropped keys as tombstones, so the
// image's older rows of them stay hidden), and the small tables are the
// delta's.
func LayDelta(ctx context.Context, db *sql.DB, deltaPath string, watermark Epoch) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `ATTACH DATABASE ? AS d`, fileURI(deltaPath)+"?mode=ro"); err != nil {
		return fmt.Errorf("open delta: %w", err)
	}
	defer conn.ExecContext(context.Background(), `DETACH DATABASE d`)
	var dv int
	if err := conn.QueryRowContext(ctx, `PRAGMA d.user_version`).Scan(&dv); err != nil {
		return fmt.Errorf("read delta: %w", err)
	}
	if dv != 1 && dv != SchemaVersion {
		return fmt.Errorf("%w: delta of schema version %d", ErrCorrupt, dv)
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	w := int64(watermark)
	stmts := []string{`DELETE FROM main.segments WHERE epoch >= ?1`, `DELETE FROM main.dropped WHERE epoch >= ?1`}
	small := []string{"parts", "meta", "executions", "fronts", "epoch_times"}
	if dv == SchemaVersion {
		stmts = append(stmts,
			`INSERT INTO main.base (k, epoch, ser) SELECT k, epoch, ser FROM d.base WHERE true
				ON CONFLICT (k) DO UPDATE SET epoch = excluded.epoch, ser = excluded.ser WHERE excluded.epoch >= base.epoch`,
			`INSERT INTO main.segments (epoch, entries, data) SELECT epoch, entries, data FROM d.segments ORDER BY seq`,
			`INSERT OR REPLACE INTO main.dropped SELECT * FROM d.dropped`)
		small = append(small, "steps")
	}
	for _, t := range small {
		stmts = append(stmts, `DELETE FROM main.`+t, `INSERT INTO main.`+t+` SELECT * FROM d.`+t)
	}
	for _, q := range stmts {
		var args []any
		if strings.Contains(q, "?1") {
			args = append(args, w)
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("apply delta: %w", err)
		}
	}
	steps, err := loadSteps(ctx, tx)
	if err != nil {
		return err
	}
	// Tombstones for the keys dropped at or after the watermark: the
	// image may still hold their older rows, below it.
	byEpoch := map[Epoch][]entry{}
	if dv == SchemaVersion {
		rows, err := tx.QueryContext(ctx, `SELECT k, epoch FROM d.dropped`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var e entry
			if err := rows.Scan(&e.k, &e.epoch); err != nil {
				rows.Close()
				return err
			}
			e.tomb = true
			byEpoch[e.epoch] = append(byEpoch[e.epoch], e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	} else if err := v1DeltaEntries(ctx, tx, steps, byEpoch); err != nil {
		return err
	}
	epochs := make([]Epoch, 0, len(byEpoch))
	for e := range byEpoch {
		epochs = append(epochs, e)
	}
	sort.Slice(epochs, func(i, j int) bool { return epochs[i] < epochs[j] })
	for _, e := range epochs {
		if err := insertSegment(ctx, tx, e, sortEntries(byEpoch[e])); err != nil {
			return err
		}
	}
	// The image's segments below the delta's compaction point stay until
	// the next compaction merges them (it merges every segment below its
	// target). compacted_epoch stays the delta's, above every base row:
	// the base may hold newer rows of those segments' keys (the delta's),
	// and a reader takes a segment over the base without asking it only
	// at or above compacted_epoch. (Lowering it to the image's oldest
	// segment, as this did, made reads on demand return the image's older
	// value over the delta's newer base row, and a restored flow continue
	// from it.) A delta that records no compaction (version 1) gets one
	// just above its newest base row.
	compacted, err := metaEpoch(ctx, tx, "compacted_epoch")
	if err != nil {
		return err
	}
	if compacted == 0 {
		var newest sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT max(epoch) FROM main.base`).Scan(&newest); err != nil {
			return err
		}
		if err := setMeta(ctx, tx, "compacted_epoch", uint64(max(newest.Int64+1, 1))); err != nil {
			return err
		}
	}
	if err := countStepKeys(ctx, tx); err != nil {
		return err
	}
	return tx.Commit()
}

// raiseCompactionPoint mends, at Begin, a partition that a flowkeep
// before this fix restored from a base and a delta: its LayDelta lowered
// compacted_epoch below the delta's base rows, so reads on demand took
// the image's older segments over them. Such a partition was trimmed by a
// restore (an execution with no workers) to an epoch above its compaction
// point, and nothing compacted since; only then, and once per compaction
// point (compaction_checked records the last one checked), is the base
// read (a scan), and the point raised above its newest row.
func raiseCompactionPoint(ctx context.Context, tx *sql.Tx) error {
	compacted, err := metaEpoch(ctx, tx, "compacted_epoch")
	if err != nil {
		return err
	}
	checked, err := metaEpoch(ctx, tx, "compaction_checked")
	if err != nil || checked == compacted {
		return err
	}
	var restored bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM executions WHERE worker_count = 0 AND resume_epoch > ?)`, int64(compacted)).Scan(&restored); err != nil || !restored {
		return err
	}
	var newest sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT max(epoch) FROM base`).Scan(&newest); err != nil {
		return err
	}
	if newest.Valid && Epoch(newest.Int64) >= compacted {
		compacted = Epoch(newest.Int64 + 1)
		if err := setMeta(ctx, tx, "compacted_epoch", uint64(compacted)); err != nil {
			return err
		}
	}
	return setMeta(ctx, tx, "compaction_checked", uint64(compacted))
}

// v1DeltaEntries reads a version-1 delta's rows (snaps at or after its
// watermark, and its dropped keys) as entries by epoch, numbering steps the
// image does not know yet.
func v1DeltaEntries(ctx context.Context, tx *sql.Tx, steps *stepTable, byEpoch map[Epoch][]entry) error {
	type row struct {
		step, key string
		e         Epoch
		val       []byte
		tomb      bool
	}
	var all []row
	rows, err := tx.QueryContext(ctx, `SELECT step_id, state_key, epoch, ser, ser IS NULL FROM d.snaps
		UNION ALL SELECT step_id, state_key, epoch, NULL, 1 FROM d.dropped`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.step, &r.key, &r.e, &r.val, &r.tomb); err != nil {
			rows.Close()
			return err
		}
		if !r.tomb && r.val == nil {
			r.val = []byte{}
		}
		all = append(all, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, r := range all {
		num, ok := steps.num(StepID(r.step))
		if !ok {
			if num, err = steps.add(ctx, tx, StepID(r.step)); err != nil {
				return err
			}
		}
		byEpoch[r.e] = append(byEpoch[r.e], entry{k: appendKey(nil, num, StateKey(r.key)), epoch: r.e, tomb: r.tomb, val: r.val})
	}
	return nil
}
