package recovery

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// docText is doc.go's package comment as one string, "//" stripped, lines
// joined by spaces (so a phrase the formatter wrapped still matches).
func docText(t *testing.T) (flat string, lines []string) {
	t.Helper()
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var words []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "//") {
			continue
		}
		l = strings.TrimPrefix(strings.TrimPrefix(l, "//"), " ")
		lines = append(lines, l)
		words = append(words, strings.TrimSpace(l))
	}
	return strings.Join(words, " "), lines
}

// docNumber finds the one number the doc states in the phrase re (its
// first group).
func docNumber(t *testing.T, flat, re string) int64 {
	t.Helper()
	m := regexp.MustCompile(re).FindAllStringSubmatch(flat, -1)
	if len(m) != 1 {
		t.Fatalf("doc.go states %q %d times, want once", re, len(m))
	}
	n, err := strconv.ParseInt(m[0][1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The numbers recovery/doc.go states are the code's: a default changed in
// one place and not the other fails here.
func TestDoc_DefaultsAreTheCodes(t *testing.T) {
	flat, _ := docText(t)
	every := Epoch(docNumber(t, flat, `Options\.CompactEvery, default max\((\d+), d\)`))
	for _, d := range []Epoch{0, 1, every - 1, every, every + 1, 3 * every} {
		s := NewStore(nil, 1, Options{Intervals: Intervals{Snapshot: time.Second, Backup: time.Duration(d) * time.Second}})
		if got := s.compactEvery(); got != max(every, d) {
			t.Errorf("with d = %d, compaction runs every %d epochs; doc.go says max(%d, d) = %d", d, got, every, max(every, d))
		}
	}
	if s := NewStore(nil, 1, Options{CompactEvery: 3, Intervals: Intervals{Snapshot: time.Second, Backup: time.Hour}}); s.compactEvery() != 3 {
		t.Errorf("an explicit CompactEvery is not used: %d", s.compactEvery())
	}
	if got := docNumber(t, flat, `DefaultMaxPendingBytes, (\d+) MiB`) << 20; got != DefaultMaxPendingBytes {
		t.Errorf("doc.go says DefaultMaxPendingBytes is %d, the code %d", got, DefaultMaxPendingBytes)
	}
	if got := NewStore(nil, 1, Options{}).opts.MaxPendingBytes; got != DefaultMaxPendingBytes {
		t.Errorf("MaxPendingBytes 0 means %d, not DefaultMaxPendingBytes", got)
	}
	if got := time.Duration(docNumber(t, flat, `DroppedRetention \((\d+) hours\)`)) * time.Hour; got != DroppedRetention {
		t.Errorf("doc.go says DroppedRetention is %v, the code %v", got, DroppedRetention)
	}
	if got := docNumber(t, flat, `MaxRuns \((\d+)\)`); got != MaxRuns {
		t.Errorf("doc.go says MaxRuns is %d, the code %d", got, MaxRuns)
	}
	if got := docNumber(t, flat, `slices of at most (\d+) keys`); got != compactSlice {
		t.Errorf("doc.go says compaction slices hold %d keys, the code %d", got, compactSlice)
	}
	if got := docNumber(t, flat, `# Schema \(version (\d+)\)`); got != SchemaVersion {
		t.Errorf("doc.go describes schema version %d, the code writes %d", got, SchemaVersion)
	}
}

// The schema doc.go lists is the one a partition has: every table with its
// columns in order, and every meta key a run writes.
func TestDoc_SchemaIsThePartitions(t *testing.T) {
	ctx := context.Background()
	_, lines := docText(t)
	doc := map[string][]string{}
	var metaKeys string
	inMeta := false
	tableRe := regexp.MustCompile(`^\t([a-z_]+)\(([a-z_, ]+)\)\s*(.*)$`)
	for _, l := range lines {
		if m := tableRe.FindStringSubmatch(l); m != nil {
			doc[m[1]] = strings.Split(m[2], ", ")
			inMeta = m[1] == "meta"
			if inMeta {
				metaKeys = m[3]
			}
			continue
		}
		if inMeta && strings.HasPrefix(l, "\t ") {
			metaKeys += " " + strings.TrimSpace(l)
			continue
		}
		inMeta = false
	}
	dir := initDir(t, 1)
	st := openStore(t, dir, time.Second, 2*time.Second)
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for e := Epoch(1); e <= 6; e++ {
		if err := st.Commit(ctx, 0, e+1, []Row{{Step: "s", Key: "k", Epoch: e, Value: []byte("v")}, {Step: "s", Key: StateKey(strconv.Itoa(int(e))), Epoch: e, Value: nil}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := OpenDB(filepath.Join(dir, "part-0.sqlite3"), true)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	var documented []string
	for n := range doc {
		documented = append(documented, n)
	}
	slices.Sort(documented)
	if !slices.Equal(tables, documented) {
		t.Fatalf("partition tables %v, doc.go lists %v", tables, documented)
	}
	for _, tb := range tables {
		rows, err := db.Query(`SELECT name FROM pragma_table_info(?) ORDER BY cid`, tb)
		if err != nil {
			t.Fatal(err)
		}
		var cols []string
		for rows.Next() {
			var c string
			rows.Scan(&c)
			cols = append(cols, c)
		}
		rows.Close()
		if !slices.Equal(cols, doc[tb]) {
			t.Errorf("table %s has columns %v, doc.go says %v", tb, cols, doc[tb])
		}
	}
	rows, err = db.Query(`SELECT key FROM meta ORDER BY key`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var k string
		rows.Scan(&k)
		n++
		if !regexp.MustCompile(`(^|[ ,])` + regexp.QuoteMeta(k) + `([ ,]|$)`).MatchString(metaKeys) {
			t.Errorf("meta key %q is not in doc.go's schema (%s)", k, metaKeys)
		}
	}
	if n < 8 {
		t.Fatalf("only %d meta keys after a run: the run did not get far", n)
	}
}
