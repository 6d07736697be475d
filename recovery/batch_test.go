package recovery

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"slices"
	"testing"
)

// sortRefs orders by key bytewise, then by arrival, like the comparison
// sort it replaces: keys that share long prefixes, keys that are prefixes
// of others (also with zero bytes), and repeats.
func TestBatch_SortRefsMatchesComparisonSort(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for _, n := range []int{0, 1, 5, 40, 3000} {
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
			got := slices.Clone(b.refs)
			b.sortRefs(got)
			for i := range got {
				if !bytes.Equal(b.key(got[i]), b.key(want[i])) || got[i].seq != want[i].seq {
					t.Fatalf("n=%d: position %d: %q#%d, want %q#%d", n, i, b.key(got[i]), got[i].seq, b.key(want[i]), want[i].seq)
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
	if _, _, err := writeSegments(ctx, tx, []*batch{b1, b2}, nil, nil, nil); err != nil {
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
