package core

import (
	"fmt"
	"runtime/debug"
	"sort"
	"testing"
	"time"
)

func makeSlab(keys []string, epoch Epoch) restoredSlab[int] {
	sl := restoredSlab[int]{ents: make([]entry[int], len(keys)), keys: keys, epochs: make([]Epoch, len(keys))}
	for i := range keys {
		v := int(epoch)
		sl.ents[i] = entry[int]{s: &v, fl: flRestored}
		sl.epochs[i] = epoch
	}
	return sl
}

func TestRestoredIndex(t *testing.T) {
	keys := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s%d", prefix, i)
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		expect int // the size hint
		slabs  [][]string
	}{
		{"empty", 0, nil},
		{"one key", 0, [][]string{{"a"}}},
		{"empty key", 0, [][]string{{"", "a"}}},
		{"hint too small", 1, [][]string{keys("k", slabSize), keys("m", 3000)}},
		{"hint right", 50_000, [][]string{keys("k", slabSize), keys("m", slabSize), keys("n", 40_000-2*slabSize)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix := newRestoredIndex[int](tc.expect)
			var all []string
			for _, s := range tc.slabs {
				for len(s) > 0 {
					n := min(len(s), slabSize)
					ix.add(makeSlab(s[:n], 1))
					all = append(all, s[:n]...)
					s = s[n:]
				}
			}
			if k, e := ix.take("not there"); e != nil {
				t.Fatalf("take of a missing key = %q", k)
			}
			// Take half; each is found once, then never again.
			for i, k := range all {
				if i%2 == 1 {
					continue
				}
				got, e := ix.take(k)
				if e == nil || got != k || e.is(flRestored) {
					t.Fatalf("take(%q) = %q, %+v", k, got, e)
				}
				if _, again := ix.take(k); again != nil {
					t.Fatalf("%q taken twice", k)
				}
			}
			// each visits exactly the rest.
			var left []string
			ix.each(func(k string, _ *entry[int], _ Epoch) { left = append(left, k) })
			var want []string
			for i, k := range all {
				if i%2 == 1 {
					want = append(want, k)
				}
			}
			sort.Strings(left)
			sort.Strings(want)
			if fmt.Sprint(left) != fmt.Sprint(want) {
				t.Fatalf("each visited %d keys, want %d", len(left), len(want))
			}
		})
	}
}

func TestRestoredIndex_KeyLoadedTwiceKeepsTheNewerRow(t *testing.T) {
	for _, order := range [][]Epoch{{3, 5}, {5, 3}} {
		ix := newRestoredIndex[int](0)
		ix.add(makeSlab([]string{"x", "y"}, order[0]))
		ix.add(makeSlab([]string{"x"}, order[1]))
		n := 0
		ix.each(func(string, *entry[int], Epoch) { n++ })
		if _, e := ix.take("x"); e == nil || *e.s != 5 {
			t.Fatalf("loaded at %v: take(x) = %+v, want the row of epoch 5", order, e)
		}
		if n != 2 {
			t.Fatalf("loaded at %v: each visited %d entries, want 2 (x once, y)", order, n)
		}
		n = 0
		ix.each(func(string, *entry[int], Epoch) { n++ })
		if n != 1 {
			t.Fatalf("loaded at %v: %d entries left after taking x, want 1 (y)", order, n)
		}
	}
}

// BenchmarkRestoredIndex: the cost per key of loading a state into the
// index (add), of building its tables (at the first lookup), and of a
// lookup.
func BenchmarkRestoredIndex(b *testing.B) {
	const n = 500_000
	var slabs [][]string
	for i := 0; i < n; i += slabSize {
		ks := make([]string, 0, slabSize)
		for j := i; j < min(n, i+slabSize); j++ {
			ks = append(ks, fmt.Sprintf("key%08d", j*7919%n))
		}
		slabs = append(slabs, ks)
	}
	var add, build, take float64
	for b.Loop() {
		ents := make([]restoredSlab[int], len(slabs))
		for i, s := range slabs {
			ents[i] = makeSlab(s, 1)
		}
		t0 := time.Now()
		ix := newRestoredIndex[int](n)
		for _, e := range ents {
			ix.add(e)
		}
		t1 := time.Now()
		ix.build()
		t2 := time.Now()
		for _, s := range slabs[:10] {
			for _, k := range s {
				if _, e := ix.take(k); e == nil {
					b.Fatal("missing")
				}
			}
		}
		t3 := time.Now()
		add += float64(t1.Sub(t0).Nanoseconds()) / n
		build += float64(t2.Sub(t1).Nanoseconds()) / n
		take += float64(t3.Sub(t2).Nanoseconds()) / float64(10*slabSize)
	}
	b.ReportMetric(add/float64(b.N), "add-ns/key")
	b.ReportMetric(build/float64(b.N), "build-ns/key")
	b.ReportMetric(take/float64(b.N), "take-ns/key")
}

func TestGCPause_NestedPausesRestoreTheSetting(t *testing.T) {
	percent := func() int { p := debug.SetGCPercent(-1); debug.SetGCPercent(p); return p }
	defer debug.SetGCPercent(debug.SetGCPercent(150))
	a := gcPause()
	b := gcPause()
	if p := percent(); p != -1 {
		t.Fatalf("GC percent during a pause = %d, want -1 (off)", p)
	}
	a()
	a() // resuming twice is harmless
	if p := percent(); p != -1 {
		t.Fatalf("GC percent with one pause left = %d, want -1", p)
	}
	b()
	if p := percent(); p != 150 {
		t.Fatalf("GC percent after the pauses = %d, want 150 (as before)", p)
	}
}
