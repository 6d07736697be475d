package recovery

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
)

// A restore's image is opened by name: a name that leads nowhere fails,
// and no empty database appears there.
func TestOpenImageDB_NeverCreatesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.sqlite3")
	for name, open := range map[string]func(string) error{
		"OpenImageDB":   func(p string) error { return ping(OpenImageDB(p)) },
		"OpenScratchDB": func(p string) error { return ping(OpenScratchDB(p)) },
	} {
		if err := open(path); err == nil {
			t.Errorf("%s opened a missing file", name)
		}
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Fatalf("%s created %s: %v", name, path, err)
		}
	}
}

func ping(db *sql.DB, err error) error {
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Ping()
}

// A scratch image in WAL mode is opened in rollback mode (SQLite then
// never opens a WAL to leave WAL mode) and is back in WAL mode once
// closed, its change kept; WAL frames beside one are still read.
func TestOpenScratchDB_OpensAWALImageInRollbackMode(t *testing.T) {
	ctx := context.Background()
	header := func(path string) (byte, byte) {
		b, err := os.ReadFile(path)
		if err != nil || len(b) < 20 {
			t.Fatalf("read %s: %v", path, err)
		}
		return b[18], b[19]
	}
	count := func(db *sql.DB) int {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, withWAL := range []bool{false, true} {
		dir := t.TempDir()
		src := filepath.Join(dir, "src.sqlite3")
		w, err := sql.Open("sqlite", "file:"+src+"?_pragma=journal_mode(WAL)&_pragma=wal_autocheckpoint(0)")
		if err != nil {
			t.Fatal(err)
		}
		w.SetMaxOpenConns(1)
		for _, q := range []string{`CREATE TABLE t (x)`, `INSERT INTO t VALUES (1)`, `INSERT INTO t VALUES (2)`} {
			if _, err := w.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		img := filepath.Join(dir, "image.sqlite3")
		if !withWAL {
			if _, err := w.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
				t.Fatal(err)
			}
		}
		copyPartition(t, src, img)
		if withWAL {
			b, err := os.ReadFile(src + "-wal")
			if err != nil || len(b) == 0 {
				t.Fatalf("no WAL frames to copy: %v", err)
			}
			os.WriteFile(img+"-wal", b, 0o600)
		}
		w.Close()
		if r, v := header(img); r != 2 || v != 2 {
			t.Fatalf("the image is not in WAL mode (%d, %d)", r, v)
		}
		db, err := OpenScratchDB(img)
		if err != nil {
			t.Fatal(err)
		}
		if n := count(db); n != 2 {
			t.Fatalf("WAL beside: %v: %d rows, not 2", withWAL, n)
		}
		if r, v := header(img); !withWAL && (r != 1 || v != 1) {
			t.Fatalf("open in WAL mode (%d, %d)", r, v)
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO t VALUES (3)`); err != nil {
			t.Fatal(err)
		}
		if err := CloseScratchDB(ctx, db); err != nil {
			t.Fatal(err)
		}
		if r, v := header(img); r != 2 || v != 2 {
			t.Fatalf("WAL beside: %v: closed not in WAL mode (%d, %d)", withWAL, r, v)
		}
		db, err = OpenDB(img, true)
		if err != nil {
			t.Fatal(err)
		}
		if n := count(db); n != 3 {
			t.Fatalf("WAL beside: %v: %d rows after the change, not 3", withWAL, n)
		}
		db.Close()
	}
}
