package recovery

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"
)

type submission struct {
	w        WorkerIndex
	frontier Epoch
	rows     []Row
	sel      []int32         // indexes into rows of this partition's rows (nil: all)
	bytes    int64           // what the submission holds against the store's budget
	done     chan<- struct{} // if set: a flush marker, closed once everything before it is applied
	compact  chan<- error    // if set: compact now, fully, and report
}

// writer owns one partition's writes: it applies queued submissions in
// order, several per transaction (group commit), so the dataflow never waits
// for SQLite except when the queue is full. Between commits it moves the
// commit epoch and compacts, in slices, so durability never waits for more
// than one slice of cleanup.
type writer struct {
	s        *Store
	p        *Partition
	idx      int
	ch       chan submission
	commit   Epoch   // commit epoch (GC point)
	compact  Epoch   // every segment below it is merged into the base
	front    []Epoch // this partition's frontier per worker
	frontier Epoch   // min of front
	steps    *stepTable

	// per-commit scratch, reused
	keys []byte
	refs []keyRef
	blob []byte

	job *compaction // a compaction under way
}

// keyRef is one row of a commit being encoded: its partition key's place
// in the writer's key buffer.
type keyRef struct {
	off, n int32
	row    *Row
}

const maxGroup = 64

// DroppedRetention is how long compaction remembers keys whose tombstone
// it applied (the dropped table), for incremental backups taken against an
// older base: a delta is only correct over a base younger than this, so
// backup.Options.BaseMaxAge is validated against it.
const DroppedRetention = 72 * time.Hour

// compactSlice bounds the keys one compaction transaction merges, so a
// commit waits at most that long for the writer.
const compactSlice = 20_000

func (w *writer) loop() {
	defer w.s.wg.Done()
	for {
		var sub submission
		var ok bool
		if w.job != nil {
			// Compaction runs between commits: commits first.
			select {
			case sub, ok = <-w.ch:
			default:
				w.step()
				continue
			}
		} else {
			sub, ok = <-w.ch
		}
		if !ok {
			return
		}
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
		var compacts []chan<- error
		real := group[:0]
		for _, g := range group {
			switch {
			case g.done != nil:
				flushes = append(flushes, g.done)
			case g.compact != nil:
				compacts = append(compacts, g.compact)
			default:
				real = append(real, g)
			}
		}
		w.applyGroup(real)
		if w.job != nil && w.s.Err() == nil {
			w.step() // one slice per group: compaction never starves
		}
		for _, f := range flushes {
			close(f)
		}
		for _, c := range compacts {
			c <- w.compactAll()
		}
	}
}

func (w *writer) applyGroup(group []submission) {
	var held int64
	for _, g := range group {
		held += g.bytes
	}
	defer w.s.release(held)
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
	if err := w.maybeGC(true); err != nil {
		w.s.fail(fmt.Errorf("partition %d: %w", w.p.Index, err))
	}
}

// step runs one compaction slice, recording a failure.
func (w *writer) step() {
	if err := w.compactStep(); err != nil {
		w.job = nil
		w.s.fail(fmt.Errorf("compact partition %d: %w", w.p.Index, err))
	}
}

// maybeGC moves the commit epoch to (frontier durable everywhere) - d when
// that is past the current one (a small transaction: no row is touched),
// and, if compact, starts a compaction once the commit epoch is
// compactEvery epochs past the last one.
func (w *writer) maybeGC(compact bool) error {
	d := w.s.opts.Intervals.D()
	g := w.s.global()
	if g > d && g-d > w.commit {
		c := g - d
		ctx := context.Background()
		tx, err := w.p.DB.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := w.setCommit(ctx, tx, c); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		w.commit = c
	}
	if compact && w.job == nil && w.commit >= w.compact+w.s.compactEvery() {
		return w.startCompaction(w.commit)
	}
	return nil
}

func (w *writer) setCommit(ctx context.Context, tx *sql.Tx, c Epoch) error {
	if err := setMeta(ctx, tx, "commit_epoch", uint64(c)); err != nil {
		return err
	}
	// Keep the entry that dates epoch c: the first recorded epoch at or after it.
	_, err := tx.ExecContext(ctx, `DELETE FROM epoch_times WHERE epoch < (SELECT coalesce(min(epoch), ?) FROM epoch_times WHERE epoch >= ?)`, c, c)
	return err
}

// apply writes a group of submissions in one transaction: per epoch, one
// segment of the changed keys, sorted; then the frontiers.
func (w *writer) apply(group []submission) error {
	ctx := context.Background()
	tx, err := w.p.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	w.keys, w.refs = w.keys[:0], w.refs[:0]
	for gi := range group {
		g := &group[gi]
		if g.frontier > w.front[g.w] {
			w.front[g.w] = g.frontier
		}
		add := func(r *Row) error {
			num, ok := w.steps.num(r.Step)
			if !ok {
				if num, err = w.steps.add(ctx, tx, r.Step); err != nil {
					return err
				}
			}
			off := len(w.keys)
			w.keys = appendKey(w.keys, num, r.Key)
			w.refs = append(w.refs, keyRef{off: int32(off), n: int32(len(w.keys) - off), row: r})
			return nil
		}
		if g.sel == nil {
			for i := range g.rows {
				if err := add(&g.rows[i]); err != nil {
					return err
				}
			}
		} else {
			for _, i := range g.sel {
				if err := add(&g.rows[i]); err != nil {
					return err
				}
			}
		}
	}
	if len(w.refs) > 0 {
		if err := w.writeSegments(ctx, tx); err != nil {
			return err
		}
	}
	for wi, f := range w.front {
		if _, err := tx.ExecContext(ctx, `INSERT INTO fronts (ex_num, worker_index, frontier) VALUES (?, ?, ?)
			ON CONFLICT (ex_num, worker_index) DO UPDATE SET frontier = max(frontier, excluded.frontier)`, w.s.ex, wi, f); err != nil {
			return err
		}
	}
	now := unixMs(w.s.opts.Now())
	mine := slices.Min(w.front)
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

// writeSegments sorts the group's rows by (epoch, k) and writes one segment
// per epoch. A key given twice in one epoch keeps its later row.
func (w *writer) writeSegments(ctx context.Context, tx *sql.Tx) error {
	keys := w.keys
	kof := func(r keyRef) []byte { return keys[r.off : r.off+r.n] }
	slices.SortStableFunc(w.refs, func(a, b keyRef) int {
		if a.row.Epoch != b.row.Epoch {
			if a.row.Epoch < b.row.Epoch {
				return -1
			}
			return 1
		}
		return bytes.Compare(kof(a), kof(b))
	})
	for start := 0; start < len(w.refs); {
		e := w.refs[start].row.Epoch
		end := start
		for end < len(w.refs) && w.refs[end].row.Epoch == e {
			end++
		}
		w.blob = w.encode(w.blob[:0], w.refs[start:end], kof)
		n := countEntries(w.refs[start:end], kof)
		if _, err := tx.ExecContext(ctx, `INSERT INTO segments (epoch, entries, data) VALUES (?, ?, ?)`, int64(e), n, w.blob); err != nil {
			return err
		}
		start = end
	}
	return nil
}

func countEntries(refs []keyRef, kof func(keyRef) []byte) int {
	n := 0
	for i, r := range refs {
		if i+1 < len(refs) && bytes.Equal(kof(refs[i+1]), kof(r)) {
			continue
		}
		n++
	}
	return n
}

// encode writes a segment of refs (sorted by k) without building entries.
func (w *writer) encode(dst []byte, refs []keyRef, kof func(keyRef) []byte) []byte {
	dst = append(dst, segmentFormat)
	dst = appendUvarint(dst, uint64(countEntries(refs, kof)))
	for i, r := range refs {
		k := kof(r)
		if i+1 < len(refs) && bytes.Equal(kof(refs[i+1]), k) {
			continue // a later row of the same key wins
		}
		dst = appendUvarint(dst, uint64(len(k)))
		dst = append(dst, k...)
		if r.row.Value == nil {
			dst = append(dst, 1)
			continue
		}
		dst = append(dst, 0)
		dst = appendUvarint(dst, uint64(len(r.row.Value)))
		dst = append(dst, r.row.Value...)
	}
	return dst
}

// compaction merges the segments below target into the base, a slice at a
// time; the segments are deleted, in one range delete, only once all their
// keys are in the base. Until then base and segments together hold the
// same state, so a crash mid-way loses nothing (the next run starts it
// again).
type compaction struct {
	target  Epoch
	m       *merger
	dropped int64
	began   time.Time
}

func (w *writer) startCompaction(target Epoch) error {
	rows, err := w.p.DB.QueryContext(context.Background(), `SELECT epoch, data FROM segments WHERE epoch < ? ORDER BY epoch, seq`, target)
	if err != nil {
		return err
	}
	var cs []cursor
	for rows.Next() {
		var e Epoch
		var data []byte
		if err := rows.Scan(&e, &data); err != nil {
			rows.Close()
			return err
		}
		it, err := newSegmentIter(data, e)
		if err != nil {
			rows.Close()
			return err
		}
		cs = append(cs, it)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	w.job = &compaction{target: target, m: newMerger(cs), began: time.Now()}
	return nil
}

// compactStep merges up to compactSlice keys into the base, in one
// transaction; the last step deletes the merged segments.
func (w *writer) compactStep() error {
	j := w.job
	ctx := context.Background()
	tx, err := w.p.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	bw := newBaseWriter(tx)
	defer bw.close()
	var del *sql.Stmt
	now := unixMs(w.s.opts.Now())
	n := 0
	for n < compactSlice && j.m.next() {
		n++
		e := &j.m.out
		if !e.tomb {
			if err := bw.upsert(ctx, e.k, e.epoch, e.val); err != nil {
				return err
			}
			continue
		}
		// A tombstone deletes the key; the key is remembered as dropped so
		// an incremental backup over an older base removes it too.
		if del == nil {
			if del, err = tx.PrepareContext(ctx, `DELETE FROM base WHERE k = ?1 AND epoch < ?2`); err != nil {
				return err
			}
			defer del.Close()
		}
		if _, err := del.ExecContext(ctx, e.k, int64(e.epoch)); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO dropped (k, epoch, unix_ms) VALUES (?, ?, ?)`, e.k, int64(e.epoch), now); err != nil {
			return err
		}
		j.dropped++
	}
	if j.m.err != nil {
		return j.m.err
	}
	if err := bw.flush(ctx); err != nil {
		return err
	}
	finished := n < compactSlice
	if finished {
		for _, st := range []struct {
			q    string
			args []any
		}{
			{`DELETE FROM segments WHERE epoch < ?`, []any{int64(j.target)}},
			{`DELETE FROM dropped WHERE unix_ms < ?`, []any{now - DroppedRetention.Milliseconds()}},
		} {
			if _, err := tx.ExecContext(ctx, st.q, st.args...); err != nil {
				return err
			}
		}
		if err := setMeta(ctx, tx, "compacted_epoch", uint64(j.target)); err != nil {
			return err
		}
		if err := countStepKeys(ctx, tx); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if finished {
		w.compact = j.target
		w.job = nil
	}
	return nil
}

// compactAll finishes any compaction under way and compacts everything
// below the commit epoch.
func (w *writer) compactAll() error {
	if err := w.s.Err(); err != nil {
		return err
	}
	if w.job == nil && w.commit > w.compact {
		if err := w.startCompaction(w.commit); err != nil {
			return err
		}
	}
	for w.job != nil {
		if err := w.compactStep(); err != nil {
			w.job = nil
			return err
		}
	}
	return nil
}

func appendUvarint(dst []byte, v uint64) []byte {
	for v >= 0x80 {
		dst = append(dst, byte(v)|0x80)
		v >>= 7
	}
	return append(dst, byte(v))
}
