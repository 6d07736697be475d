package recovery

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// A partition key k is uvarint(step number) followed by the state key's
// bytes. Step numbers are given in the steps table, in order of first use,
// and never change: base rows, segments and dropped keys all use them, and
// they sort by k bytewise (SQLite's BLOB order).

// appendKey appends the partition key of (step number num, key).
func appendKey(dst []byte, num uint64, key StateKey) []byte {
	dst = binary.AppendUvarint(dst, num)
	return append(dst, key...)
}

// splitKey splits a partition key into its step number and state key.
func splitKey(k []byte) (uint64, []byte, bool) {
	num, n := binary.Uvarint(k)
	if n <= 0 {
		return 0, nil, false
	}
	return num, k[n:], true
}

// stepTable maps step ids to their numbers in one partition.
type stepTable struct {
	byID  map[StepID]uint64
	byNum []StepID // index: number (0 unused)
	// last caches the previous lookup: rows of one commit mostly share a step.
	lastID  StepID
	lastNum uint64
}

func loadSteps(ctx context.Context, q queryer) (*stepTable, error) {
	t := &stepTable{byID: map[StepID]uint64{}}
	rows, err := q.QueryContext(ctx, `SELECT num, step_id FROM steps ORDER BY num`)
	if err != nil {
		return nil, fmt.Errorf("read steps: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var num uint64
		var id string
		if err := rows.Scan(&num, &id); err != nil {
			return nil, err
		}
		if num == 0 || num > 1<<20 {
			return nil, fmt.Errorf("%w: step number %d", ErrCorrupt, num)
		}
		t.set(num, StepID(id))
	}
	return t, rows.Err()
}

func (t *stepTable) set(num uint64, id StepID) {
	t.byID[id] = num
	for uint64(len(t.byNum)) <= num {
		t.byNum = append(t.byNum, "")
	}
	t.byNum[num] = id
}

func (t *stepTable) num(id StepID) (uint64, bool) {
	if id == t.lastID && t.lastNum != 0 {
		return t.lastNum, true
	}
	n, ok := t.byID[id]
	if ok {
		t.lastID, t.lastNum = id, n
	}
	return n, ok
}

// id returns the step id of number num.
func (t *stepTable) id(num uint64) (StepID, bool) {
	if num == 0 || num >= uint64(len(t.byNum)) || t.byNum[num] == "" {
		return "", false
	}
	return t.byNum[num], true
}

// add gives step id the next number, in tx.
func (t *stepTable) add(ctx context.Context, tx *sql.Tx, id StepID) (uint64, error) {
	num := uint64(len(t.byNum))
	if num == 0 {
		num = 1
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO steps (num, step_id) VALUES (?, ?)`, num, string(id)); err != nil {
		return 0, fmt.Errorf("number step %s: %w", id, err)
	}
	t.set(num, id)
	return num, nil
}

// baseUpsertBatch rows go into one statement: far fewer calls through
// database/sql than one per row (measured: 500 rows a statement upsert in
// about 60% of the CPU of 128).
const baseUpsertBatch = 500

// baseUpsertSQL upserts n rows. Compaction gives each key once, its newest
// change among the segments it merges; the base row may still be newer (a
// delta laid over an image brings base rows newer than the image's
// segments below the watermark, which stay until the next compaction), and
// then it stays.
func baseUpsertSQL(n int) string {
	return "INSERT INTO base (k, epoch, ser) VALUES (?, ?, ?)" + strings.Repeat(", (?, ?, ?)", n-1) +
		" ON CONFLICT (k) DO UPDATE SET epoch = excluded.epoch, ser = excluded.ser WHERE excluded.epoch >= base.epoch"
}

var fullUpsertSQL = baseUpsertSQL(baseUpsertBatch)

// baseWriter upserts base rows in batches, in the order given (callers give
// them in k order, so the B-tree is walked, not jumped around).
type baseWriter struct {
	tx   *sql.Tx
	full *sql.Stmt
	args []any
	bufs [][]byte // copies of the batch's k and values
	n    int
	rows int64
}

func newBaseWriter(tx *sql.Tx) *baseWriter {
	return &baseWriter{tx: tx, args: make([]any, 0, 3*baseUpsertBatch)}
}

func (b *baseWriter) upsert(ctx context.Context, k []byte, e Epoch, val []byte) error {
	if val == nil {
		val = []byte{}
	}
	// The caller's slices may be reused: keep copies until the batch runs.
	kb := b.buf(2*b.n, k)
	vb := b.buf(2*b.n+1, val)
	b.args = append(b.args, kb, int64(e), vb)
	b.n++
	b.rows++
	if b.n == baseUpsertBatch {
		return b.flush(ctx)
	}
	return nil
}

func (b *baseWriter) buf(i int, src []byte) []byte {
	for len(b.bufs) <= i {
		b.bufs = append(b.bufs, nil)
	}
	b.bufs[i] = append(b.bufs[i][:0], src...)
	if b.bufs[i] == nil {
		b.bufs[i] = []byte{}
	}
	return b.bufs[i]
}

func (b *baseWriter) flush(ctx context.Context) error {
	if b.n == 0 {
		return nil
	}
	var err error
	if b.n == baseUpsertBatch {
		if b.full == nil {
			if b.full, err = b.tx.PrepareContext(ctx, fullUpsertSQL); err != nil {
				return err
			}
		}
		_, err = b.full.ExecContext(ctx, b.args...)
	} else {
		_, err = b.tx.ExecContext(ctx, baseUpsertSQL(b.n), b.args...)
	}
	b.args = b.args[:0]
	b.n = 0
	if err != nil {
		return fmt.Errorf("write base rows: %w", err)
	}
	return nil
}

func (b *baseWriter) close() {
	if b.full != nil {
		b.full.Close()
	}
}

// insertSegment stores one segment of epoch e (entries sorted by k).
func insertSegment(ctx context.Context, tx *sql.Tx, e Epoch, es []entry) error {
	if len(es) == 0 {
		return nil
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO segments (epoch, entries, data) VALUES (?, ?, ?)`, int64(e), len(es), encodeSegment(nil, es))
	return err
}

func setMeta(ctx context.Context, tx *sql.Tx, key string, v uint64) error {
	_, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)`, key, strconv.FormatUint(v, 10))
	return err
}

// countStepKeys records, per step, how many base rows it has (a hint for
// sizing state maps on resume).
func countStepKeys(ctx context.Context, tx *sql.Tx) error {
	steps, err := loadSteps(ctx, tx)
	if err != nil {
		return err
	}
	for num := range steps.byNum {
		if num == 0 || steps.byNum[num] == "" {
			continue
		}
		lo := binary.AppendUvarint(nil, uint64(num))
		hi := append([]byte(nil), lo...)
		hi[len(hi)-1]++ // a uvarint's last byte is below 0x80
		if _, err := tx.ExecContext(ctx, `UPDATE steps SET keys = (SELECT count(*) FROM base WHERE k >= ?1 AND k < ?2) WHERE num = ?3`, lo, hi, num); err != nil {
			return err
		}
	}
	return nil
}
