package backup

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/internal/diskspace"
	"github.com/flowkeep/flowkeep/internal/human"
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

// deltaPattern names delta files while they are built: the pid of the
// process building one lets SweepTemp tell a live one from a leftover.
func deltaPattern() string { return "flowkeep-delta-" + strconv.Itoa(os.Getpid()) + "-*.sqlite3" }

// basePattern names a base image staged for upload: among the delta files
// for SweepTemp, which removes a killed backup's.
func basePattern() string { return "flowkeep-delta-" + strconv.Itoa(os.Getpid()) + "-*.base" }

// stageRoom says why a base of size bytes cannot be staged in dir ("" if
// it can): staging needs that much room, and leaves a quarter of the file
// system's free space to others.
func stageRoom(dir string, size int64) string {
	if !stageBase {
		return "staging is off"
	}
	if dir == "" {
		dir = os.TempDir()
	}
	free, ok := diskspace.Free(dir)
	if ok && uint64(size) > free/4*3 {
		return fmt.Sprintf("%s has %s free, too little to stage the %s image: uploaded straight from the partition, which holds back its WAL until the upload ends (point TMPDIR at a roomier directory)",
			dir, human.Bytes(int64(free)), human.Bytes(size))
	}
	return ""
}

// stageBase is whether bases are staged (off only in the benchmark that
// measures what staging saves).
var stageBase = true

// SweepTemp removes the delta files (and their SQLite journals) that a
// killed backup left in dir (os.TempDir() if empty): those of processes
// that no longer run, and unnamed ones (older versions) an hour old. It
// returns what it removed.
func SweepTemp(dir string) ([]string, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	ms, err := filepath.Glob(filepath.Join(dir, "flowkeep-delta-*"))
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, m := range ms {
		rest := strings.TrimPrefix(filepath.Base(m), "flowkeep-delta-")
		pidStr, _, named := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if named && err == nil {
			if processAlive(pid) {
				continue
			}
		} else if st, err := os.Stat(m); err != nil || time.Since(st.ModTime()) < time.Hour {
			continue
		}
		if err := os.Remove(m); err != nil && !os.IsNotExist(err) {
			return gone, fmt.Errorf("remove leftover %s: %w", m, err)
		}
		gone = append(gone, m)
	}
	return gone, nil
}
