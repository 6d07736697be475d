package recovery

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
)

// The pass log is the persistent index of the keys end of input must
// reach (the "awake" keys: OnEOF visits the keys changed in the current
// pass over the input, and windows are open only in those). It holds what
// this execution's compactions merged into the base with a change of its
// own epochs (at or after its resume epoch R): each compaction slice's
// newest entry per key, tombstones included, as segments (one per epoch
// and slice, in key order). A scan of the keys changed after epoch `after`
// (ScanState) then merges those segments with the live ones instead of
// reading every base row of the step, so end of input after a compaction
// costs in proportion to the changes of the pass, not to the keys stored.
// Writing it costs an encoding of the entries and one row per epoch and
// slice; the base is written as before.
//
// Rules:
//   - At Begin the base holds no row of an epoch at or after R (trimFrom;
//     compaction merges only epochs below the commit epoch, and Trim and
//     resumes never go below it). Begin makes the log anew, empty (it
//     drops the last execution's).
//   - Every compaction slice writes its entries of epochs >= R into the
//     log in the transaction that writes them into the base. So every
//     base row of an epoch >= R, and every deletion of one, is in every
//     snapshot in the log, or still in a segment (the live index), or
//     both; a key in several of them has its newest entry win, as in the
//     base.
//   - A scan after `after` may use the log only if R <= after+1: a
//     continuation of a flow that ended at epoch E resumes at R = E+1. A
//     resume in the middle of a pass (after a crash) has R > after+1 and
//     reads the base, as does a scan of every key.
//   - The log holds at most a share of the partition (1/passLogShare of
//     its file at Begin, and at most passLogMax bytes, since a scan holds
//     the log's segments in memory while it merges them). The slice that
//     would take it past that empties it and leaves a mark (a row of seq
//     0) instead, and the execution logs no more. A scan that sees the
//     mark, in the same read transaction as the segments, reads the base.
//     So end of input costs in proportion to the changes of the pass
//     either way: through the log, or, past the share, a partition at
//     most passLogShare times their size.
//   - A fresh partition (no state at Begin) keeps no log: its first pass's
//     end of input visits every key anyway, and a first run pays nothing.
//   - Nothing else writes the base during an execution. What writes it
//     between executions (LayDelta, migrations, older flowkeeps) writes
//     rows of epochs below the next R, which the log need not hold. The
//     log is in no delta.
//
// BenchmarkScanAfterCompaction measures a scan through the log against one
// of the base, and what keeping the log costs a continuation's writes.

// passLogTable is the pass log's table, made anew by every Begin (so
// partitions of older flowkeeps get it, and no execution sees another's).
// Its columns are the segments table's.
const passLogTable = `CREATE TABLE passlog (seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, entries INTEGER NOT NULL, data BLOB NOT NULL) STRICT`

// passLogShare and passLogMax bound the log: 1/passLogShare of the
// partition's file, and passLogMax bytes.
const (
	passLogShare = 16
	passLogMax   = 4 << 20
)

// resetPassLog makes the pass log anew at Begin (in its transaction,
// after the trim).
func resetPassLog(ctx context.Context, tx *sql.Tx) error {
	for _, q := range []string{`DROP TABLE IF EXISTS passlog`, passLogTable} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// passStart is what an execution's pass log covers, fixed at Begin:
// whether there is one (the partition held state), the resume epoch, and
// how many bytes of segments it may keep.
type passStart struct {
	on    bool
	from  Epoch
	limit int64
}

// startPassLog reads whether the partition holds state after Begin's
// trim, and its size.
func startPassLog(ctx context.Context, db *sql.DB, from Epoch) (passStart, error) {
	ps := passStart{from: from}
	var size int64
	err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM base) OR EXISTS (SELECT 1 FROM segments),
		(SELECT page_count FROM pragma_page_count()) * (SELECT page_size FROM pragma_page_size())`).Scan(&ps.on, &size)
	if err != nil {
		return ps, fmt.Errorf("read whether the partition holds state: %w", err)
	}
	ps.limit = min(size/passLogShare, passLogMax)
	return ps, nil
}

// covers says whether the log holds every change of the base written
// after `after` (unless it was given up: see passLogRows).
func (p passStart) covers(after Epoch) bool { return p.on && p.from <= after+1 }

// passSlice gathers what one compaction slice merges with a change of an
// epoch >= from (tombstones too: a later one hides an earlier value), as
// one segment per epoch, in key order.
type passSlice struct {
	from   Epoch
	epochs map[Epoch]*passSegment
}

type passSegment struct {
	n    int
	body []byte
}

func newPassSlice(from Epoch) *passSlice {
	return &passSlice{from: from, epochs: map[Epoch]*passSegment{}}
}

// add takes the merger's next entry (in key order).
func (p *passSlice) add(e *entry) {
	if e.epoch < p.from {
		return
	}
	sg := p.epochs[e.epoch]
	if sg == nil {
		sg = &passSegment{}
		p.epochs[e.epoch] = sg
	}
	sg.n++
	sg.body = appendEntry(sg.body, e)
}

// write stores the slice's segments in the log, in the slice's
// transaction, unless that takes the log past limit bytes: then it empties
// the log and marks it given up. kept is the log's size so far; it returns
// the new size, or -1 once given up.
func (p *passSlice) write(ctx context.Context, tx *sql.Tx, kept, limit int64) (int64, error) {
	var add int64
	for _, sg := range p.epochs {
		add += int64(len(sg.body)) + 2*binary.MaxVarintLen64
	}
	if kept+add > limit {
		for _, q := range []string{`DELETE FROM passlog`, `INSERT INTO passlog (seq, epoch, entries, data) VALUES (0, 0, 0, x'')`} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return kept, err
			}
		}
		return -1, nil
	}
	epochs := slices.Sorted(maps.Keys(p.epochs))
	for _, e := range epochs {
		sg := p.epochs[e]
		blob := binary.AppendUvarint([]byte{segmentFormat}, uint64(sg.n))
		blob = append(blob, sg.body...)
		if _, err := tx.ExecContext(ctx, `INSERT INTO passlog (epoch, entries, data) VALUES (?, ?, ?)`, int64(e), sg.n, blob); err != nil {
			return kept, err
		}
	}
	return kept + add, nil
}

// passLogRows reads, in one read transaction, the log's segments of epochs
// after `after`, in (epoch, seq) order, as live rows, or reports that the
// log was given up (nil rows, false).
func passLogRows(ctx context.Context, db *sql.DB, after Epoch) ([]*liveRow, bool, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, false, err
	}
	defer tx.Rollback()
	var gaveUp bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM passlog WHERE seq = 0)`).Scan(&gaveUp); err != nil || gaveUp {
		return nil, false, err
	}
	rows, err := readLiveRows(ctx, tx, `SELECT seq, epoch, data FROM passlog WHERE epoch > ? ORDER BY epoch, seq`, int64(after))
	if err != nil {
		return nil, false, fmt.Errorf("read the pass log: %w", err)
	}
	return rows, true, nil
}
