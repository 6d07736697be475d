package backup

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/flowkeep/flowkeep/recovery"
)

// pageReader streams a partition's pages, in page order, from an open read
// transaction on conn: the committed content of the db file and its WAL as
// of that transaction.
type pageReader struct {
	rows *sql.Rows
	cur  []byte
	err  error
}

func newPageReader(ctx context.Context, conn *sql.Conn) (*pageReader, error) {
	rows, err := conn.QueryContext(ctx, `SELECT data FROM sqlite_dbpage ORDER BY pgno`)
	if err != nil {
		return nil, fmt.Errorf("read pages: %w", err)
	}
	return &pageReader{rows: rows}, nil
}

func (p *pageReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if len(p.cur) == 0 {
			if p.err != nil {
				return n, p.err
			}
			if !p.rows.Next() {
				p.err = p.rows.Err()
				if p.err == nil {
					p.err = io.EOF
				}
				p.rows.Close()
				if n > 0 {
					return n, nil
				}
				return 0, p.err
			}
			var page []byte
			if err := p.rows.Scan(&page); err != nil {
				p.err = err
				return n, err
			}
			p.cur = page
		}
		k := copy(b[n:], p.cur)
		p.cur = p.cur[k:]
		n += k
	}
	return n, nil
}

func (p *pageReader) Close() error { return p.rows.Close() }

// buildDelta writes, into a new SQLite file at path, the partition's small
// tables and every snapshot row and dropped key at or after epoch w, read
// through conn's open read transaction. It returns the number of rows.
func buildDelta(ctx context.Context, conn *sql.Conn, w uint64, path string) (int64, error) {
	db, err := recovery.CreateEmpty(ctx, path)
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
		{"parts", ""}, {"meta", ""}, {"executions", ""}, {"fronts", ""}, {"epoch_times", ""},
		{"dropped", " WHERE epoch >= ?"},
	} {
		if _, err := copyTable(ctx, conn, tx, t.table, t.where, w); err != nil {
			return 0, fmt.Errorf("delta: copy %s: %w", t.table, err)
		}
	}
	rows, err := conn.QueryContext(ctx, `SELECT step_id, state_key, epoch, ser FROM snaps WHERE epoch >= ?`, w)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var n int64
	batch := make([]recovery.Row, 0, 4096)
	for rows.Next() {
		var r recovery.Row
		var step, key string
		if err := rows.Scan(&step, &key, &r.Epoch, &r.Value); err != nil {
			return 0, err
		}
		r.Step, r.Key = recovery.StepID(step), recovery.StateKey(key)
		batch = append(batch, r)
		if len(batch) == cap(batch) {
			if err := recovery.InsertRows(ctx, tx, batch); err != nil {
				return 0, err
			}
			n += int64(len(batch))
			batch = batch[:0]
		}
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if err := recovery.InsertRows(ctx, tx, batch); err != nil {
		return 0, err
	}
	n += int64(len(batch))
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return n, db.Close()
}

func copyTable(ctx context.Context, src *sql.Conn, dst *sql.Tx, table, where string, arg uint64) (int, error) {
	var args []any
	if where != "" {
		args = append(args, arg)
	}
	rows, err := src.QueryContext(ctx, "SELECT * FROM "+table+where, args...)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return 0, err
	}
	ins := "INSERT INTO " + table + " VALUES (" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	n := 0
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return n, err
		}
		if _, err := dst.ExecContext(ctx, ins, vals...); err != nil {
			return n, err
		}
		n++
	}
	return n, rows.Err()
}

// ApplyDelta lays a delta (a file made by buildDelta) over a restored base
// image db: base rows at or after the watermark are replaced by the delta's,
// dropped keys come back as tombstones, and the small tables are the delta's
// (see recovery.LayDelta).
func ApplyDelta(ctx context.Context, db *sql.DB, deltaPath string, watermark uint64) error {
	return recovery.LayDelta(ctx, db, filepath.ToSlash(deltaPath), recovery.Epoch(watermark))
}

// tempPath returns a fresh path in dir (os.TempDir() if empty).
func tempPath(dir, pattern string) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	return name, nil
}
