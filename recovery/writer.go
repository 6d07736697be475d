package recovery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"time"
)

type submission struct {
	w        WorkerIndex
	frontier Epoch
	b        *batch          // this partition's changes (nil: none)
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
	steps    *sharedSteps

	blob []byte      // segment scratch, reused
	sort sortScratch // sort scratch, reused

	job *compaction // a compaction under way

	// applied counts, per worker, the commits applied here (see
	// Store.Written).
	applied []atomic.Uint64
	counted Epoch // the compaction that last counted the base's keys
	// pass is what this execution's pass log covers (see passlog.go), fixed
	// at Begin; kept is the bytes it holds, -1 once given up.
	pass passStart
	kept int64
	// grown is what this writer added to the state index since its last
	// compaction (Options.CompactLiveBytes).
	grown int64
}

const maxGroup = 64

// DroppedRetention is how long compaction remembers keys whose tombstone
// it applied (the dropped table), for incremental backups taken against an
// older base: a delta is only correct over a base younger than this, so
// backup.Options.BaseMaxAge is validated against it.
const DroppedRetention = 72 * time.Hour

// compactSlice bounds the keys one compaction transaction merges, so a
// commit waits at most that long for the writer (Store.slice).
const compactSlice = 20_000

func (w *writer) loop() {
	defer w.s.wg.Done()
	defer w.endCompaction() // a compaction under way is left to the next run
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
	defer func() {
		for _, g := range group {
			putBatch(g.b)
		}
	}()
	if w.s.Err() != nil || len(group) == 0 {
		return // a failed store drops further commits; Close reports the error
	}
	if err := w.apply(group); err != nil {
		w.s.fail(w.failure("commit to", err))
		return
	}
	for _, g := range group {
		w.applied[g.w].Add(1)
		w.s.committed(w.idx, g.w, g.frontier)
	}
	w.s.notifyApplied()
	if err := w.maybeGC(true); err != nil {
		w.s.fail(w.failure("clean up", err))
	}
}

// step runs one compaction slice, recording a failure.
func (w *writer) step() {
	if err := w.compactStep(); err != nil {
		w.endCompaction()
		w.s.fail(w.failure("compact", err))
	}
}

// endCompaction drops the job (finished, failed or abandoned) and lets
// another partition compact.
func (w *writer) endCompaction() {
	if w.job != nil {
		w.job = nil
		<-w.s.compacting
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
	share := w.s.liveShare()
	due := w.commit >= w.compact+w.s.compactEvery() || (share > 0 && w.commit > w.compact && w.grown > share)
	if compact && w.job == nil && due {
		// One partition compacts at a time: its segments are in memory
		// while it does.
		select {
		case w.s.compacting <- struct{}{}:
		default:
			return nil // another partition is compacting: try after the next commit
		}
		if err := w.startCompaction(w.commit); err != nil {
			<-w.s.compacting
			return err
		}
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
	stepsDone, err := w.steps.persist(ctx, tx)
	if err != nil {
		return err
	}
	var bs []*batch
	for _, g := range group {
		if g.frontier > w.front[g.w] {
			w.front[g.w] = g.frontier
		}
		if g.b != nil && len(g.b.refs) > 0 {
			bs = append(bs, g.b)
		}
	}
	// With the state index full, the rows written are indexed once they
	// are committed (and before the commits count as applied).
	var ps *partIndex
	if si := w.s.state.Load(); si != nil && si.full {
		ps = si.parts[w.idx]
	}
	type written struct {
		seq  int64
		e    Epoch
		blob []byte
	}
	var rows []written
	var onRow func(int64, Epoch, []byte)
	if ps != nil {
		onRow = func(seq int64, e Epoch, blob []byte) { rows = append(rows, written{seq, e, slices.Clone(blob)}) }
	}
	if len(bs) > 0 {
		if w.blob, err = writeSegments(ctx, tx, bs, w.blob, &w.sort, onRow); err != nil {
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
	stepsDone()
	if len(rows) > 0 {
		live := make([]*liveRow, len(rows))
		for i, r := range rows {
			if live[i], err = newLiveRow(r.seq, r.e, r.blob); err != nil {
				return err
			}
		}
		ps.live.add(live)
		for _, r := range live {
			w.grown += r.size()
		}
	}
	if cap(w.blob) > 16<<20 || cap(w.sort.tmp) > 1<<18 {
		// One huge commit need not pin its buffers for good.
		w.blob, w.sort = nil, sortScratch{}
	}
	if risen {
		w.frontier = mine
		if w.s.opts.OnCommitted != nil {
			w.s.opts.OnCommitted(w.p.Index, mine)
		}
	}
	return nil
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
	var cs []cursor
	if si := w.s.state.Load(); si != nil && si.full {
		// Every segment is indexed in memory: merge those, unread.
		for _, r := range si.parts[w.idx].live.list() {
			if r.epoch < target {
				cs = append(cs, &liveCursor{r: r, j: len(r.offs)})
			}
		}
	} else if err := eachSegment(context.Background(), w.p.DB, target, func(it *segmentIter) error { cs = append(cs, it); return nil }); err != nil {
		return err
	}
	w.job = &compaction{target: target, m: newMerger(cs), began: time.Now()}
	return nil
}

// compactStep merges up to Store.slice keys into the base, in one
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
	var lg *passSlice
	if w.pass.on && w.kept >= 0 {
		lg = newPassSlice(w.pass.from)
	}
	for n < w.s.slice && j.m.next() {
		n++
		e := &j.m.out
		if lg != nil {
			lg.add(e)
		}
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
	finished := n < w.s.slice
	kept := w.kept
	if lg != nil {
		if kept, err = lg.write(ctx, tx, kept, w.pass.limit); err != nil {
			return fmt.Errorf("write the pass log: %w", err)
		}
	}
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
		// The counts are a hint (KeyHint) and cost a pass over the base:
		// compactions started by the live segments' size recount only
		// every CompactEvery epochs.
		if w.s.opts.CompactLiveBytes <= 0 || j.target >= w.counted+w.s.compactEvery() {
			if err := countStepKeys(ctx, tx); err != nil {
				return err
			}
			w.counted = j.target
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	w.kept = kept
	if finished {
		w.compact = j.target
		w.grown = 0
		w.endCompaction()
		if si := w.s.state.Load(); si != nil {
			ps := si.parts[w.idx]
			ps.baseGrew.Store(true)
			ps.compacted.Store(uint64(j.target))
			ps.live.dropBelow(j.target)
		}
	}
	return nil
}

// compactAll finishes any compaction under way and compacts everything
// below the commit epoch (which may have moved on since that one began).
func (w *writer) compactAll() error {
	if err := w.s.Err(); err != nil {
		return err
	}
	for {
		for w.job != nil {
			if err := w.compactStep(); err != nil {
				w.endCompaction()
				return err
			}
		}
		if w.commit <= w.compact {
			return nil
		}
		w.s.compacting <- struct{}{}
		if err := w.startCompaction(w.commit); err != nil {
			<-w.s.compacting
			return err
		}
	}
}

// failure describes a write error of this partition: which file, and on a
// full disk, which directory and what to do.
func (w *writer) failure(what string, err error) error {
	err = fmt.Errorf("%s partition %d (%s): %w", what, w.p.Index, w.p.Path, err)
	if DiskFull(err) {
		err = fmt.Errorf("%w: the disk holding %s is full: free space there (or move the partitions to a larger disk) and run again with the same -r; the epochs already durable are kept", err, filepath.Dir(w.p.Path))
	}
	return err
}

// DiskFull says whether err is a full disk (ENOSPC, or SQLite's
// SQLITE_FULL).
func DiskFull(err error) bool {
	if errors.Is(err, syscall.ENOSPC) {
		return true
	}
	var coded interface{ Code() int }
	return errors.As(err, &coded) && coded.Code()&0xff == sqliteFull
}

const sqliteFull = 13 // SQLITE_FULL

// LocalIOError says whether err is a fault of the local disk rather than
// of a file's content: a full disk, or SQLite's SQLITE_IOERR (a failed
// read, write, sync or shared-memory resize) or SQLITE_CANTOPEN.
func LocalIOError(err error) bool {
	if DiskFull(err) || errors.Is(err, syscall.EIO) {
		return true
	}
	var coded interface{ Code() int }
	return errors.As(err, &coded) && (coded.Code()&0xff == sqliteIOErr || coded.Code()&0xff == sqliteCantOpen)
}

// corruptUnlessDisk labels err as ErrCorrupt, unless it is a fault of the
// local disk (LocalIOError): the file is not to blame for those.
func corruptUnlessDisk(err error) error {
	if LocalIOError(err) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrCorrupt, err)
}

const (
	sqliteIOErr    = 10 // SQLITE_IOERR
	sqliteCantOpen = 14 // SQLITE_CANTOPEN
)
