package recovery

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
)

type submission struct {
	w        WorkerIndex
	frontier Epoch
	rows     []Row
	done     chan<- struct{} // if set: a flush marker, closed once everything before it is applied
}

// writer owns one partition's writes: it applies queued submissions in
// order, several per transaction (group commit), so the dataflow never waits
// for SQLite except when the queue is full.
type writer struct {
	s        *Store
	p        *Partition
	idx      int
	ch       chan submission
	commit   Epoch   // commit epoch (GC point)
	front    []Epoch // this partition's frontier per worker
	frontier Epoch   // min of front
}

const maxGroup = 64

func (w *writer) loop() {
	defer w.s.wg.Done()
	for sub := range w.ch {
		group := []submission{sub}
	drain:
		for len(group) < maxGroup {
			select {
			case more, ok := <-w.ch:
				if !ok {
					break drain
				}
				group = append(group, more)
			default:
				break drain
			}
		}
		var flushes []chan<- struct{}
		real := group[:0]
		for _, g := range group {
			if g.done != nil {
				flushes = append(flushes, g.done)
			} else {
				real = append(real, g)
			}
		}
		group = real
		w.applyGroup(group)
		for _, f := range flushes {
			close(f)
		}
	}
}

func (w *writer) applyGroup(group []submission) {
	if w.s.Err() != nil || len(group) == 0 {
		return // a failed store drops further commits; Close reports the error
	}
	if err := w.apply(group); err != nil {
		w.s.fail(fmt.Errorf("commit to partition %d: %w", w.p.Index, err))
		return
	}
	for _, g := range group {
		w.s.committed(w.idx, g.w, g.frontier)
	}
	if err := w.maybeGC(); err != nil {
		w.s.fail(fmt.Errorf("partition %d: %w", w.p.Index, err))
	}
}

// maybeGC moves the commit epoch to (frontier durable everywhere) - d when
// that is past the current one, in its own transaction.
func (w *writer) maybeGC() error {
	d := w.s.opts.Intervals.D()
	g := w.s.global()
	if g <= d || g-d <= w.commit {
		return nil
	}
	c := g - d
	ctx := context.Background()
	tx, err := w.p.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := gc(ctx, tx, w.commit, c, unixMs(w.s.opts.Now())); err != nil {
		return fmt.Errorf("garbage-collect to epoch %d: %w", c, err)
	}
	if err := w.setCommit(ctx, tx, c); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	w.commit = c
	return nil
}

func (w *writer) apply(group []submission) error {
	ctx := context.Background()
	tx, err := w.p.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var rows []Row
	for _, g := range group {
		rows = append(rows, g.rows...)
		if g.frontier > w.front[g.w] {
			w.front[g.w] = g.frontier
		}
	}
	if err := insertRows(ctx, tx, rows); err != nil {
		return err
	}
	for wi, f := range w.front {
		if _, err := tx.ExecContext(ctx, `INSERT INTO fronts (ex_num, worker_index, frontier) VALUES (?, ?, ?)
			ON CONFLICT (ex_num, worker_index) DO UPDATE SET frontier = max(frontier, excluded.frontier)`, w.s.ex, wi, f); err != nil {
			return err
		}
	}
	now := unixMs(w.s.opts.Now())
	mine := w.front[0]
	for _, f := range w.front {
		mine = min(mine, f)
	}
	if mine > w.frontier {
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO epoch_times (epoch, unix_ms) VALUES (?, ?)`, mine, now); err != nil {
			return err
		}
		w.frontier = mine
	}
	return tx.Commit()
}

func (w *writer) setCommit(ctx context.Context, tx *sql.Tx, c Epoch) error {
	if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO meta (key, value) VALUES ('commit_epoch', ?)`, strconv.FormatUint(uint64(c), 10)); err != nil {
		return err
	}
	// Keep the entry that dates epoch c: the first recorded epoch at or after it.
	_, err := tx.ExecContext(ctx, `DELETE FROM epoch_times WHERE epoch < (SELECT coalesce(min(epoch), ?) FROM epoch_times WHERE epoch >= ?)`, c, c)
	return err
}

// droppedRetentionMs is how long GC remembers keys whose tombstone it
// removed, for incremental backups taken against an older base.
const droppedRetentionMs = 7 * 24 * 3600 * 1000

// gc moves the commit epoch from old to c: for every key with rows in
// [old, c), it deletes the rows older than the key's newest row below c, and
// drops that newest row too if it is a tombstone (remembering the key in
// `dropped`). Keys without rows in [old, c) are not touched.
func gc(ctx context.Context, tx *sql.Tx, old, c Epoch, now int64) error {
	stmts := []struct {
		q    string
		args []any
	}{
		{`DELETE FROM snaps WHERE (step_id, state_key, epoch) IN (
			SELECT s.step_id, s.state_key, s.epoch
			FROM (SELECT step_id, state_key, max(epoch) AS keep FROM snaps WHERE epoch >= ?1 AND epoch < ?2 GROUP BY step_id, state_key) AS k
			JOIN snaps AS s ON s.step_id = k.step_id AND s.state_key = k.state_key AND s.epoch < k.keep)`, []any{old, c}},
		{`INSERT OR REPLACE INTO dropped (step_id, state_key, epoch, unix_ms)
			SELECT step_id, state_key, epoch, ?3 FROM snaps WHERE epoch >= ?1 AND epoch < ?2 AND ser IS NULL`, []any{old, c, now}},
		{`DELETE FROM snaps WHERE epoch >= ?1 AND epoch < ?2 AND ser IS NULL`, []any{old, c}},
		{`DELETE FROM dropped WHERE unix_ms < ?`, []any{now - droppedRetentionMs}},
	}
	for _, st := range stmts {
		res, err := tx.ExecContext(ctx, st.q, st.args...)
		if err != nil {
			return err
		}
		_ = res
	}
	return nil
}

// insertBatch rows go into one INSERT statement: far fewer round trips
// through database/sql than one statement per row.
const insertBatch = 128

var insertSQL = func() []string {
	out := make([]string, insertBatch+1)
	for n := 1; n <= insertBatch; n++ {
		q := "INSERT OR REPLACE INTO snaps (step_id, state_key, epoch, ser) VALUES (?, ?, ?, ?)"
		q += strings.Repeat(", (?, ?, ?, ?)", n-1)
		out[n] = q
	}
	return out
}()

func insertRows(ctx context.Context, tx *sql.Tx, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	full, err := tx.PrepareContext(ctx, insertSQL[insertBatch])
	if err != nil {
		return err
	}
	defer full.Close()
	args := make([]any, 0, 4*insertBatch)
	for len(rows) > 0 {
		n := min(len(rows), insertBatch)
		args = args[:0]
		for _, r := range rows[:n] {
			args = append(args, string(r.Step), string(r.Key), int64(r.Epoch), r.Value)
		}
		if n == insertBatch {
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, insertSQL[n], args...)
		}
		if err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}
