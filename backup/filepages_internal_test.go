package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/flowkeep/flowkeep/recovery"
)

// The pages read from the file (and, for pages the WAL names, through
// SQLite) are the transaction's snapshot, byte for byte, while a writer
// keeps committing and checkpointing: whether the snapshot began with
// frames in the WAL, or with the WAL fully checkpointed (read lock 0).
func TestFilePageReader_IsTheSnapshotUnderConcurrentWrites(t *testing.T) {
	for _, tc := range []struct {
		name       string
		checkpoint bool // the WAL fully checkpointed when the snapshot begins
	}{{"frames in the WAL", false}, {"WAL checkpointed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "p.sqlite3")
			w, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=wal_autocheckpoint(0)&_pragma=busy_timeout(5000)")
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			w.SetMaxOpenConns(1)
			mustExec(t, w, `CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)`)
			put := func(lo, hi int) {
				tx, err := w.Begin()
				if err != nil {
					t.Fatal(err)
				}
				for k := lo; k < hi; k++ {
					v := make([]byte, 300)
					rand.Read(v)
					if _, err := tx.Exec(`INSERT OR REPLACE INTO t VALUES (?, ?)`, k, v); err != nil {
						t.Fatal(err)
					}
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
			}
			put(0, 20000)
			mustExec(t, w, `PRAGMA wal_checkpoint(TRUNCATE)`)
			put(0, 3000) // frames in the WAL
			if tc.checkpoint {
				mustExec(t, w, `PRAGMA wal_checkpoint(PASSIVE)`)
			}
			r, err := recovery.OpenDB(path, true)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			conn, err := r.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			mustExecConn(t, conn, `BEGIN`)
			defer conn.ExecContext(ctx, `ROLLBACK`)
			var pageSize int
			var pageCount int64
			conn.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&pageSize)
			conn.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pageCount)
			// The writer changes every page range and checkpoints as far
			// as the reader lets it, while the reader reads.
			step := func(i int) {
				put(i*500%20000, i*500%20000+500)
				put(20000+i*50, 20000+i*50+50) // the file grows
				w.Exec(`PRAGMA wal_checkpoint(PASSIVE)`)
			}
			for i := 0; i < 40; i++ {
				step(i)
			}
			var stop atomic.Bool
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 40; !stop.Load(); i++ {
					step(i)
				}
			}()
			fr, err := newFilePageReader(ctx, conn, path, pageSize, pageCount)
			if err != nil || fr == nil {
				t.Fatalf("file page reader: %v, %v", fr, err)
			}
			fromFile, err := io.ReadAll(fr)
			fr.Close()
			if err != nil {
				t.Fatal(err)
			}
			stop.Store(true)
			wg.Wait()
			pr, err := newPageReader(ctx, conn)
			if err != nil {
				t.Fatal(err)
			}
			viaSQL, err := io.ReadAll(pr)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(fromFile)) != pageCount*int64(pageSize) || !bytes.Equal(fromFile, viaSQL) {
				t.Fatalf("the pages read from the file (%d bytes) differ from the snapshot's (%d bytes)", len(fromFile), len(viaSQL))
			}
		})
	}
}

// A file renamed over the partition's path after SQLite opened it is not
// read: the reader falls back to SQLite.
func TestFilePageReader_RefusesAFileRenamedOverThePath(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "p.sqlite3")
	for _, p := range []string{path, path + ".other"} {
		db, err := sql.Open("sqlite", "file:"+p+"?_pragma=journal_mode(WAL)")
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, db, `CREATE TABLE t (k INTEGER PRIMARY KEY)`)
		db.Close()
	}
	r, err := recovery.OpenDB(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	conn, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustExecConn(t, conn, `BEGIN`)
	var n int
	conn.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n)
	if fr, err := newFilePageReader(ctx, conn, path, 4096, 2); err != nil || fr == nil {
		t.Fatalf("the file SQLite reads: %v, %v", fr, err)
	} else {
		fr.Close()
	}
	if err := os.Rename(path+".other", path); err != nil {
		t.Fatal(err)
	}
	if fr, err := newFilePageReader(ctx, conn, path, 4096, 2); err != nil || fr != nil {
		t.Fatalf("a file renamed over the path: %v, %v; want no reader (read through SQLite)", fr, err)
	}
}

func mustExec(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.Exec(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func mustExecConn(t *testing.T, c *sql.Conn, q string) {
	t.Helper()
	if _, err := c.ExecContext(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}
