package recovery

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A writable open looks before it writes: a SQLite file in the recovery
// directory that is not a partition (another program's database, found by
// the *.sqlite3 pattern) or whose identity is refused is left exactly as it
// was, its journal mode included, and gets no -wal or -shm.
func TestOpen_FilesThatAreNotPartitionsAreNotWritten(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 1)
	mk := func(name string, qs ...string) string {
		path := filepath.Join(dir, name)
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if _, err := db.Exec(q); err != nil {
				t.Fatal(err)
			}
		}
		db.Close()
		return path
	}
	foreign := mk("app.sqlite3", `CREATE TABLE notes (x TEXT)`, `INSERT INTO notes VALUES ('mine')`)
	origForeign, _ := os.ReadFile(foreign)
	st := openStore(t, dir, time.Second, 0)
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	bad := mk("bad.sqlite3", `CREATE TABLE parts (part_index INTEGER, part_count INTEGER, flow_uid TEXT, created_unix_ms INTEGER)`,
		`INSERT INTO parts VALUES (5, 2, 'x', 0)`)
	origBad, _ := os.ReadFile(bad)
	if _, err := OpenPartition(ctx, bad, false); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open a partition 5 of 2: %v, want ErrCorrupt", err)
	}
	for path, orig := range map[string][]byte{foreign: origForeign, bad: origBad} {
		if now, _ := os.ReadFile(path); !bytes.Equal(now, orig) {
			t.Errorf("%s was changed by a writable open (journal mode byte %d, was %d)", filepath.Base(path), now[18], orig[18])
		}
		for _, suf := range []string{"-wal", "-shm"} {
			if _, err := os.Stat(path + suf); err == nil {
				t.Errorf("%s%s was created", filepath.Base(path), suf)
			}
		}
	}
}
