package recovery

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
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
	seq      int64   // last changelog sequence number used
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
	// In primary-key order, inserts walk the B-tree instead of jumping
	// around it: far fewer pages touched per transaction.
	sortRows(rows)
	if err := insertRows(ctx, tx, rows); err != nil {
		return err
	}
	if err := w.logChanges(ctx, tx, rows); err != nil {
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
	risen := mine > w.frontier
	if risen {
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO epoch_times (epoch, unix_ms) VALUES (?, ?)`, mine, now); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if risen {
		w.frontier = mine
		if w.s.opts.OnCommitted != nil {
			w.s.opts.OnCommitted(w.p.Index, mine)
		}
	}
	return nil
}

// logChanges appends one changelog row per epoch present in rows.
func (w *writer) logChanges(ctx context.Context, tx *sql.Tx, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	byEpoch := map[Epoch][]Row{}
	single := true
	for _, r := range rows {
		if r.Epoch != rows[0].Epoch {
			single = false
			break
		}
	}
	if single { // the common case: one epoch per commit
		byEpoch[rows[0].Epoch] = rows
	} else {
		for _, r := range rows {
			byEpoch[r.Epoch] = append(byEpoch[r.Epoch], r)
		}
	}
	for e, rs := range byEpoch {
		w.seq++
		if _, err := tx.ExecContext(ctx, `INSERT INTO changelog (epoch, seq, keys) VALUES (?, ?, ?)`, e, w.seq, encodeChangelog(rs)); err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) setCommit(ctx context.Context, tx *sql.Tx, c Epoch) error {
	if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO meta (key, value) VALUES ('commit_epoch', ?)`, strconv.FormatUint(uint64(c), 10)); err != nil {
		return err
	}
	// Keep the entry that dates epoch c: the first recorded epoch at or after it.
	_, err := tx.ExecContext(ctx, `DELETE FROM epoch_times WHERE epoch < (SELECT coalesce(min(epoch), ?) FROM epoch_times WHERE epoch >= ?)`, c, c)
	return err
}

// DroppedRetention is how long GC remembers keys whose tombstone it
// removed (the dropped table), for incremental backups taken against an
// older base: a delta is only correct over a base younger than this, so
// backup.Options.BaseMaxAge is validated against it.
const DroppedRetention = 72 * time.Hour

type stepKey struct {
	step StepID
	key  StateKey
}

// loggedKeys reads the changelog of epochs [from, to) and returns, per key,
// the newest epoch it was written at and whether that row is a tombstone.
func loggedKeys(ctx context.Context, tx *sql.Tx, from, to Epoch) (map[stepKey]loggedAt, error) {
	rows, err := tx.QueryContext(ctx, `SELECT epoch, keys FROM changelog WHERE epoch >= ? AND epoch < ? ORDER BY epoch, seq`, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[stepKey]loggedAt{}
	for rows.Next() {
		var e Epoch
		var blob []byte
		if err := rows.Scan(&e, &blob); err != nil {
			return nil, err
		}
		err := decodeChangelog(blob, func(k loggedKey) {
			out[stepKey{k.step, k.key}] = loggedAt{e, k.tomb}
		})
		if err != nil {
			return nil, err
		}
	}
	return out, rows.Err()
}

type loggedAt struct {
	epoch Epoch
	tomb  bool
}

// gc moves the commit epoch from old to c: for every key written in
// [old, c) (found in the changelog, not by scanning snaps), it deletes the
// rows older than the key's newest row below c, and drops that newest row
// too if it is a tombstone (remembering the key in `dropped`).
func gc(ctx context.Context, tx *sql.Tx, old, c Epoch, now int64) error {
	keys, err := loggedKeys(ctx, tx, old, c)
	if err != nil {
		return err
	}
	older := map[Epoch][]stepKey{} // delete rows below the key's newest
	var tombs []stepKey
	var tombAt []Epoch
	for k, at := range keys {
		if at.tomb {
			tombs = append(tombs, k)
			tombAt = append(tombAt, at.epoch)
			older[at.epoch+1] = append(older[at.epoch+1], k) // the tombstone goes too
		} else {
			older[at.epoch] = append(older[at.epoch], k)
		}
	}
	for below, ks := range older {
		if err := deleteKeys(ctx, tx, ks, "epoch < ?", below); err != nil {
			return err
		}
	}
	for i, k := range tombs {
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO dropped (step_id, state_key, epoch, unix_ms) VALUES (?, ?, ?, ?)`,
			string(k.step), string(k.key), tombAt[i], now); err != nil {
			return err
		}
	}
	for _, st := range []struct {
		q    string
		args []any
	}{
		{`DELETE FROM changelog WHERE epoch < ?`, []any{c}},
		{`DELETE FROM dropped WHERE unix_ms < ?`, []any{now - DroppedRetention.Milliseconds()}},
	} {
		if _, err := tx.ExecContext(ctx, st.q, st.args...); err != nil {
			return err
		}
	}
	return nil
}

// deleteKeys deletes the rows of keys matching cond (on epoch, one ? bound
// to arg), in primary-key order. One prepared statement per key seeks
// straight to the key's rows; a batched IN (VALUES …) costs more, as SQLite
// first builds a temporary index of the list.
func deleteKeys(ctx context.Context, tx *sql.Tx, keys []stepKey, cond string, arg Epoch) error {
	if len(keys) == 0 {
		return nil
	}
	sortKeys(keys)
	st, err := tx.PrepareContext(ctx, "DELETE FROM snaps WHERE step_id = ? AND state_key = ? AND "+cond)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, k := range keys {
		if _, err := st.ExecContext(ctx, string(k.step), string(k.key), arg); err != nil {
			return err
		}
	}
	return nil
}

func sortKeys(keys []stepKey) {
	slices.SortFunc(keys, func(a, b stepKey) int {
		if c := strings.Compare(string(a.step), string(b.step)); c != 0 {
			return c
		}
		return strings.Compare(string(a.key), string(b.key))
	})
}

// trimFrom deletes every row at or after epoch e, finding them through the
// changelog (every row at or after the commit epoch is logged), and the
// changelog entries themselves.
func trimFrom(ctx context.Context, tx *sql.Tx, e Epoch) error {
	keys, err := loggedKeys(ctx, tx, e, Epoch(1<<62))
	if err != nil {
		return err
	}
	ks := make([]stepKey, 0, len(keys))
	for k := range keys {
		ks = append(ks, k)
	}
	if err := deleteKeys(ctx, tx, ks, "epoch >= ?", e); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM changelog WHERE epoch >= ?`, e)
	return err
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

func sortRows(rows []Row) {
	slices.SortFunc(rows, func(a, b Row) int {
		if c := strings.Compare(string(a.Step), string(b.Step)); c != 0 {
			return c
		}
		if c := strings.Compare(string(a.Key), string(b.Key)); c != 0 {
			return c
		}
		return cmp.Compare(a.Epoch, b.Epoch)
	})
}
