// Command gen writes recovery's golden partition files (run it from the
// recovery directory: go generate, or go run ./testdata/gen -o testdata).
//
// The schema-1 files are written the way flowkeep wrote version 1 before
// schema 2 (commit 20e00ad): one snaps row per key and epoch (NULL ser: a
// tombstone), a changelog blob per commit and epoch, GC on every commit
// keeping per key its newest row below the commit epoch and dropping
// tombstones into dropped. This program carries its own copy of that
// schema and those rules, so the files do not depend on the code they
// test. One flow of one partition, s = 1s, b = 2s (d = 2), two workers:
//
//	v1-image.sqlite3      execution 0 after epochs 1..5 (frontier 6, commit epoch 4)
//	v1-partition.sqlite3  execution 1 resumed at 6, epochs 6..8 durable, epoch 9
//	                      written by worker 0 only (frontier 9, commit epoch 7)
//	v1-delta.sqlite3      a version-1 delta of v1-partition at watermark 6
//	v3-newer.sqlite3      v1-partition claiming schema version 3
//	bad-index.sqlite3     v1-partition whose parts row says partition 5 of 2
//	truncated.sqlite3     the first half of v1-partition
//	garbage.sqlite3       not SQLite
//
// recovery/migrate_test.go holds the same history and checks the files.
package main

import (
	"database/sql"
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"math/rand"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite"
)

const schemaV1 = `
CREATE TABLE parts (
	part_index INTEGER NOT NULL,
	part_count INTEGER NOT NULL,
	flow_uid TEXT NOT NULL,
	created_unix_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE meta (
	key TEXT PRIMARY KEY,
	value TEXT NOT NULL
) STRICT;
CREATE TABLE executions (
	ex_num INTEGER PRIMARY KEY,
	worker_count INTEGER NOT NULL,
	resume_epoch INTEGER NOT NULL,
	started_unix_ms INTEGER NOT NULL,
	snapshot_interval_ms INTEGER NOT NULL,
	backup_interval_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE fronts (
	ex_num INTEGER NOT NULL,
	worker_index INTEGER NOT NULL,
	frontier INTEGER NOT NULL,
	PRIMARY KEY (ex_num, worker_index)
) STRICT;
CREATE TABLE snaps (
	step_id TEXT NOT NULL,
	state_key TEXT NOT NULL,
	epoch INTEGER NOT NULL,
	ser BLOB,
	PRIMARY KEY (step_id, state_key, epoch)
) STRICT, WITHOUT ROWID;
CREATE TABLE changelog (
	epoch INTEGER NOT NULL,
	seq INTEGER NOT NULL,
	keys BLOB NOT NULL,
	PRIMARY KEY (epoch, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE epoch_times (
	epoch INTEGER PRIMARY KEY,
	unix_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE dropped (
	step_id TEXT NOT NULL,
	state_key TEXT NOT NULL,
	epoch INTEGER NOT NULL,
	unix_ms INTEGER NOT NULL,
	PRIMARY KEY (step_id, state_key, epoch)
) STRICT, WITHOUT ROWID;
`

// row is one change; val nil is a tombstone, "" a zero-length value.
type row struct {
	step, key string
	epoch     int64
	val       *string
}

func v(s string) *string { return &s }

// history is every epoch's changes (recovery/migrate_test.go has a copy).
var history = map[int64][]row{
	1: {{"wc.count", "c", 1, v("c1")}, {"wc.count", "f", 1, v("f1")}, {"win.sum", "w1", 1, v("w1")}},
	2: {{"wc.count", "a", 2, v("a2")}, {"win.sum", "gone", 2, v("g2")}},
	3: {{"wc.count", "b", 3, v("b3")}, {"win.sum", "gone", 3, nil}},
	4: {{"wc.count", "d", 4, v("")}, {"wc.count", "f", 4, nil}},
	5: {{"wc.count", "a", 5, v("a5")}, {"wc.count", "c", 5, nil}, {"wc.count", "e", 5, v("")}},
	6: {{"wc.count", "a", 6, v("a6")}, {"wc.count", "c", 6, v("c6")}, {"wc.count", "d", 6, nil}, {"wc.count", "f", 6, v("f6")}, {"wc.count", "h", 6, v("h6")}},
	7: {{"wc.count", "h", 7, nil}, {"win.sum", "w1", 7, v("w1.7")}},
	8: {{"wc.count", "b", 8, v("b8")}},
	9: {{"wc.count", "a", 9, v("a9")}},
}

const (
	uid     = "901d901d901d901d901d901d901d901d"
	t0      = int64(1_800_000_000_000) // created; epoch e closes at t0 + e seconds
	d       = 2
	workers = 2
)

// part is a version-1 partition being written as flowkeep wrote it.
type part struct {
	db       *sql.DB
	ex       int64
	front    []int64
	frontier int64
	commit   int64
	seq      int64
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func create(path string) *sql.DB {
	os.Remove(path)
	db, err := sql.Open("sqlite", path)
	must(err)
	db.SetMaxOpenConns(1)
	for _, q := range []string{`PRAGMA page_size = 512`, `PRAGMA journal_mode = DELETE`, schemaV1, `PRAGMA user_version = 1`} {
		_, err := db.Exec(q)
		must(err)
	}
	return db
}

func newPart(path string) *part {
	db := create(path)
	exec(db, `INSERT INTO parts VALUES (0, 1, ?, ?)`, uid, t0)
	exec(db, `INSERT INTO meta VALUES ('commit_epoch', '1')`)
	return &part{db: db, commit: 1}
}

func exec(db *sql.DB, q string, args ...any) {
	_, err := db.Exec(q, args...)
	must(err)
}

func ms(e int64) int64 { return t0 + e*1000 }

// begin records execution ex resuming at `resume`, deleting the rows at or
// after it (every row at or after the commit epoch is in the changelog).
func (p *part) begin(ex, resume int64) {
	for _, q := range []string{`DELETE FROM snaps WHERE epoch >= ?1`, `DELETE FROM changelog WHERE epoch >= ?1`, `DELETE FROM epoch_times WHERE epoch > ?1`} {
		exec(p.db, q, resume)
	}
	exec(p.db, `DELETE FROM fronts WHERE ex_num < ?`, ex)
	exec(p.db, `INSERT OR REPLACE INTO executions VALUES (?, ?, ?, ?, 1000, 2000)`, ex, workers, resume, ms(resume))
	exec(p.db, `INSERT OR IGNORE INTO epoch_times VALUES (?, ?)`, resume, ms(resume))
	exec(p.db, `INSERT INTO meta VALUES ('flow_name', 'golden') ON CONFLICT (key) DO NOTHING`)
	exec(p.db, `INSERT OR REPLACE INTO meta VALUES ('snapshot_interval_ms', '1000'), ('backup_interval_ms', '2000')`)
	p.ex, p.frontier = ex, resume
	p.front = []int64{resume, resume}
}

// commitRows is worker w's commit of rows and frontier f, then GC.
func (p *part) commitRows(w int, f int64, rows []row) {
	byEpoch := map[int64][]row{}
	for _, r := range rows {
		var ser any
		if r.val != nil {
			ser = []byte(*r.val)
			if *r.val == "" {
				ser = []byte{} // a zero-length BLOB, not NULL
			}
		}
		exec(p.db, `INSERT OR REPLACE INTO snaps VALUES (?, ?, ?, ?)`, r.step, r.key, r.epoch, ser)
		byEpoch[r.epoch] = append(byEpoch[r.epoch], r)
	}
	for e := int64(0); e < 100; e++ {
		if rs := byEpoch[e]; len(rs) > 0 {
			p.seq++
			exec(p.db, `INSERT INTO changelog VALUES (?, ?, ?)`, e, p.seq, encodeChangelog(rs))
		}
	}
	p.front[w] = max(p.front[w], f)
	exec(p.db, `INSERT INTO fronts VALUES (?, ?, ?) ON CONFLICT (ex_num, worker_index) DO UPDATE SET frontier = max(frontier, excluded.frontier)`, p.ex, w, f)
	if m := min(p.front[0], p.front[1]); m > p.frontier {
		p.frontier = m
		exec(p.db, `INSERT OR REPLACE INTO epoch_times VALUES (?, ?)`, m, ms(m))
	}
	if g := p.frontier; g > d && g-d > p.commit {
		p.gc(g - d)
	}
}

// gc moves the commit epoch to c: for every key logged in [commit, c),
// the rows older than its newest row below c go, and that row too if it is
// a tombstone (remembered in dropped).
func (p *part) gc(c int64) {
	type at struct {
		epoch int64
		tomb  bool
	}
	keys := map[[2]string]at{}
	rs, err := p.db.Query(`SELECT epoch, keys FROM changelog WHERE epoch >= ? AND epoch < ? ORDER BY epoch, seq`, p.commit, c)
	must(err)
	for rs.Next() {
		var e int64
		var blob []byte
		must(rs.Scan(&e, &blob))
		for _, k := range decodeChangelog(blob) {
			keys[[2]string{k.step, k.key}] = at{e, k.val == nil}
		}
	}
	rs.Close()
	for k, a := range keys {
		below := a.epoch
		if a.tomb {
			below++
			exec(p.db, `INSERT OR REPLACE INTO dropped VALUES (?, ?, ?, ?)`, k[0], k[1], a.epoch, ms(c))
		}
		exec(p.db, `DELETE FROM snaps WHERE step_id = ? AND state_key = ? AND epoch < ?`, k[0], k[1], below)
	}
	exec(p.db, `DELETE FROM changelog WHERE epoch < ?`, c)
	exec(p.db, `INSERT OR REPLACE INTO meta VALUES ('commit_epoch', ?)`, fmt.Sprint(c))
	exec(p.db, `DELETE FROM epoch_times WHERE epoch < (SELECT coalesce(min(epoch), ?1) FROM epoch_times WHERE epoch >= ?1)`, c)
	p.commit = c
}

// encodeChangelog is version 1's changelog blob:
//
//	uvarint(number of steps) { uvarint(len) step }
//	{ uvarint(step index) uvarint(len) key byte(1 if tombstone) }
func encodeChangelog(rows []row) []byte {
	steps := map[string]uint64{}
	var order []string
	for _, r := range rows {
		if _, ok := steps[r.step]; !ok {
			steps[r.step] = uint64(len(order))
			order = append(order, r.step)
		}
	}
	b := binary.AppendUvarint(nil, uint64(len(order)))
	for _, st := range order {
		b = binary.AppendUvarint(b, uint64(len(st)))
		b = append(b, st...)
	}
	for _, r := range rows {
		b = binary.AppendUvarint(b, steps[r.step])
		b = binary.AppendUvarint(b, uint64(len(r.key)))
		b = append(b, r.key...)
		if r.val == nil {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	return b
}

func decodeChangelog(b []byte) []row {
	n, k := binary.Uvarint(b)
	b = b[k:]
	steps := make([]string, n)
	for i := range steps {
		l, k := binary.Uvarint(b)
		steps[i] = string(b[k : k+int(l)])
		b = b[k+int(l):]
	}
	var out []row
	for len(b) > 0 {
		si, k := binary.Uvarint(b)
		b = b[k:]
		l, k := binary.Uvarint(b)
		r := row{step: steps[si], key: string(b[k : k+int(l)])}
		if b[k+int(l)] == 0 {
			r.val = v("?")
		}
		b = b[k+int(l)+1:]
		out = append(out, r)
	}
	return out
}

// vacuumInto writes a compact copy of db to path and returns it, open.
func vacuumInto(db *sql.DB, path string) *sql.DB {
	os.Remove(path)
	exec(db, `VACUUM INTO ?`, path)
	c, err := sql.Open("sqlite", path)
	must(err)
	return c
}

func main() {
	out := flag.String("o", "testdata", "directory to write the files to")
	flag.Parse()
	path := func(name string) string { return filepath.Join(*out, name) }
	work := path("v1-work.sqlite3")
	defer os.Remove(work)

	p := newPart(work)
	p.begin(0, 1)
	for e := int64(1); e <= 5; e++ {
		p.commitRows(0, e+1, history[e])
		p.commitRows(1, e+1, nil)
	}
	vacuumInto(p.db, path("v1-image.sqlite3")).Close()

	// Execution 0 stopped there; execution 1 resumes at 6 and runs 6..8;
	// worker 0 also commits epoch 9 before the flow stops.
	p.begin(1, 6)
	for e := int64(6); e <= 8; e++ {
		p.commitRows(0, e+1, history[e])
		p.commitRows(1, e+1, nil)
	}
	p.commitRows(0, 10, history[9])
	vacuumInto(p.db, path("v1-partition.sqlite3")).Close()

	// The version-1 delta at watermark 6 (backup.buildDelta of then):
	// the small tables, dropped keys and snaps rows at or after it.
	delta := create(path("v1-delta.sqlite3"))
	exec(delta, `ATTACH DATABASE ? AS p`, work)
	for _, q := range []string{
		`INSERT INTO parts SELECT * FROM p.parts`, `INSERT INTO meta SELECT * FROM p.meta`,
		`INSERT INTO executions SELECT * FROM p.executions`, `INSERT INTO fronts SELECT * FROM p.fronts`,
		`INSERT INTO epoch_times SELECT * FROM p.epoch_times`,
		`INSERT INTO dropped SELECT * FROM p.dropped WHERE epoch >= 6`, `INSERT INTO snaps SELECT * FROM p.snaps WHERE epoch >= 6`,
	} {
		exec(delta, q)
	}
	exec(delta, `DETACH DATABASE p`)
	vacuumInto(delta, path("v1-delta.sqlite3.tmp")).Close()
	delta.Close()
	must(os.Rename(path("v1-delta.sqlite3.tmp"), path("v1-delta.sqlite3")))

	newer := vacuumInto(p.db, path("v3-newer.sqlite3"))
	exec(newer, `PRAGMA user_version = 3`)
	newer.Close()
	bad := vacuumInto(p.db, path("bad-index.sqlite3"))
	exec(bad, `UPDATE parts SET part_index = 5, part_count = 2`)
	bad.Close()
	p.db.Close()

	b, err := os.ReadFile(path("v1-partition.sqlite3"))
	must(err)
	must(os.WriteFile(path("truncated.sqlite3"), b[:len(b)/2], 0o644))
	junk := make([]byte, 2048)
	rand.New(rand.NewSource(1)).Read(junk)
	must(os.WriteFile(path("garbage.sqlite3"), junk, 0o644))
}
