package backup

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"

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
