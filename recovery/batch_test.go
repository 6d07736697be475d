package recovery

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// sortRefs orders by key bytewise, then by arrival, like the comparison
// sort it replaces: keys that share long prefixes, keys that are prefixes
// of others (also with zero bytes), and repeats.
func TestBatch_SortRefsMatchesComparisonSort(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	shared := &sortScratch{}
	for _, n := range []int{0, 1, 5, 40, 3000, 200_000, 64} {
		for _, gen := range []func(i int) string{
			func(i int) string { return fmt.Sprint("w", r.Intn(50)) },
			func(i int) string { return fmt.Sprintf("user-%012d", r.Intn(n+1)) },
			func(i int) string { return string(bytes.Repeat([]byte{0}, r.Intn(20))) },
			func(i int) string {
				s := fmt.Sprintf("%s\x00%d", "long-common-prefix-", r.Intn(7))
				return s[:r.Intn(len(s)+1)]
			},
		} {
			b := &batch{}
			for i := 0; i < n; i++ {
				b.add(uint64(1+r.Intn(2)), StateKey(gen(i)), 3, []byte{byte(i)})
			}
			want := slices.Clone(b.refs)
			slices.SortStableFunc(want, b.cmp)
			// A scratch of its own, and one shared by every sort (a
			// writer's, grown by earlier sorts of other sizes).
			for _, sc := range []*sortScratch{nil, shared} {
				got := slices.Clone(b.refs)
				b.sortRefs(got, sc)
				for i := range got {
					if !bytes.Equal(b.key(got[i]), b.key(want[i])) || got[i].seq != want[i].seq {
						t.Fatalf("n=%d: position %d: %q#%d, want %q#%d", n, i, b.key(got[i]), got[i].seq, b.key(want[i]), want[i].seq)
					}
				}
			}
		}
	}
}

// A group's batches become one segment per epoch, keys sorted, a key's
// latest change kept: within a batch the later change, across batches the
// later batch's.
func TestWriteSegments_MergesBatchesLatestChangeWins(t *testing.T) {
	ctx := context.Background()
	db, err := CreateEmpty(ctx, filepath.Join(t.TempDir(), "p.sqlite3"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b1, b2 := &batch{}, &batch{}
	b1.add(1, "a", 5, []byte("a1"))
	b1.add(1, "c", 5, []byte("c1"))
	b1.add(1, "a", 5, []byte("a2"))
	b1.add(1, "z", 6, nil)
	b2.add(1, "b", 5, []byte("b1"))
	b2.add(1, "a", 5, []byte("a3"))
	b2.add(1, "c", 5, nil)
	tx, _ := db.BeginTx(ctx, nil)
	if _, err := writeSegments(ctx, tx, []*batch{b1, b2}, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	tx.Commit()
	rows, _ := db.Query(`SELECT epoch, entries, data FROM segments ORDER BY seq`)
	var got []string
	for rows.Next() {
		var e Epoch
		var n int
		var data []byte
		rows.Scan(&e, &n, &data)
		it, err := newSegmentIter(data, e)
		if err != nil {
			t.Fatal(err)
		}
		var es []string
		for it.next() {
			v := string(it.cur.val)
			if it.cur.tomb {
				v = "tomb"
			}
			es = append(es, fmt.Sprintf("%s=%s", it.cur.k[1:], v))
		}
		if it.err != nil || len(es) != n {
			t.Fatalf("segment of epoch %d: %v, %d entries, header says %d", e, it.err, len(es), n)
		}
		got = append(got, fmt.Sprintf("%d:%v", e, es))
	}
	rows.Close()
	if want := "[5:[a=a3 b=b1 c=tomb] 6:[z=tomb]]"; fmt.Sprint(got) != want {
		t.Fatalf("segments %v, want %s", got, want)
	}
}

// An epoch's changes larger than segmentSplit are written as several
// segments of that epoch, each sorted, their keys disjoint and in order,
// together every change once, and none much past segmentSplit: neither
// the writer's buffer nor SQLite's copies of it grow with the epoch.
// A store that resumes from them loads every key's newest value.
func TestWriteSegments_ALargeEpochIsCutAtKeys(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 1)
	st := openStore(t, dir, time.Second, time.Hour)
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	const n = 40_000
	val := bytes.Repeat([]byte("v"), 100) // 40k changes of ~110 bytes: ~4.4 MB
	var rows []Row
	for i := 0; i < n; i++ {
		rows = append(rows, Row{Step: "s", Key: StateKey(fmt.Sprintf("k%06d", (i*7919)%n)), Epoch: 1, Value: append([]byte(fmt.Sprint(i, ":")), val...)})
	}
	rows = append(rows, Row{Step: "s", Key: "k000001", Epoch: 1, Value: []byte("last")}) // a later change of a key wins
	if err := st.Commit(ctx, 0, 2, rows); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := open(filepath.Join(dir, "part-0.sqlite3"), true, "")
	if err != nil {
		t.Fatal(err)
	}
	q, err := db.Query(`SELECT epoch, entries, data FROM segments ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	segs, total := 0, 0
	var prev []byte
	for q.Next() {
		var e Epoch
		var entries int
		var data []byte
		if err := q.Scan(&e, &entries, &data); err != nil {
			t.Fatal(err)
		}
		if e != 1 || len(data) > segmentSplit+256 {
			t.Fatalf("segment %d: epoch %d, %d bytes (split at %d)", segs, e, len(data), segmentSplit)
		}
		it, err := newSegmentIter(data, e)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for it.next() {
			if prev != nil && bytes.Compare(prev, it.cur.k) >= 0 {
				t.Fatalf("segment %d: key %q after %q", segs, it.cur.k, prev)
			}
			prev = slices.Clone(it.cur.k)
			got++
		}
		if it.err != nil || got != entries {
			t.Fatalf("segment %d: %v, %d entries, header says %d", segs, it.err, got, entries)
		}
		segs++
		total += got
	}
	q.Close()
	db.Close()
	if segs < 4 || total != n {
		t.Fatalf("%d segments holding %d changes; want at least 4 holding %d", segs, total, n)
	}
	st = openStore(t, dir, time.Second, time.Hour)
	defer st.Close()
	rp, err := st.Begin(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	got := loadAll(t, st, rp.Epoch)
	if len(got) != n || got["s/k000001"] != "last" || !strings.HasPrefix(got["s/k000000"], "0:") {
		t.Fatalf("loaded %d keys, k000001=%q k000000=%.4q; want %d, last, 0:...", len(got), got["s/k000001"], got["s/k000000"], n)
	}
}
