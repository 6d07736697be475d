package recovery

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Trim to any epoch of the restorable range [Lo, Hi], its edges included,
// makes the next run resume exactly there with that epoch's state; it
// records a marker execution (no workers, resume epoch e) and deletes the
// segments at or after e. Outside the range it refuses and changes nothing.
func TestTrim_AtEachEdgeOfTheRange(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(2e9, 0)
	tests := []struct {
		name string
		b    time.Duration // backup interval (s = 1s): d = b/s
		at   func(lo, hi Epoch) Epoch
		// wantErr: the error says this (and nothing changes)
		wantErr string
	}{
		{name: "at Lo (the commit epoch)", b: 4 * time.Second, at: func(lo, hi Epoch) Epoch { return lo }},
		{name: "just above Lo", b: 4 * time.Second, at: func(lo, hi Epoch) Epoch { return lo + 1 }},
		{name: "just below Hi", b: 4 * time.Second, at: func(lo, hi Epoch) Epoch { return hi - 1 }},
		{name: "at Hi (the resume epoch)", b: 4 * time.Second, at: func(lo, hi Epoch) Epoch { return hi }},
		{name: "d = 0: Lo = Hi", b: 0, at: func(lo, hi Epoch) Epoch { return hi }},
		{name: "below Lo", b: 4 * time.Second, at: func(lo, hi Epoch) Epoch { return lo - 1 }, wantErr: "outside its restorable range"},
		{name: "above Hi", b: 4 * time.Second, at: func(lo, hi Epoch) Epoch { return hi + 1 }, wantErr: "outside its restorable range"},
		{name: "epoch 0", b: 4 * time.Second, at: func(lo, hi Epoch) Epoch { return 0 }, wantErr: "outside its restorable range"},
		{name: "d = 0: above Lo = Hi", b: 0, at: func(lo, hi Epoch) Epoch { return hi + 1 }, wantErr: "outside its restorable range"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: tt.b}, CompactEvery: 3}
			f := newTestFlow(t, 2, opts, int64(i), nil)
			f.run(16)
			// A partition's commit epoch catches up with the others' last
			// commit at the next commit or at Close; a run that only
			// compacts then merges everything below it.
			f.close()
			f.open()
			if err := f.st.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			f.close()
			var lo, hi Epoch
			var last ExecutionNumber
			before := make([]string, 2)
			for p := range 2 {
				db, err := OpenDB(f.path(p), true)
				if err != nil {
					t.Fatal(err)
				}
				v := mustView(t, db)
				if p > 0 && (v.Lo() != lo || v.Hi() != hi) {
					t.Fatalf("partitions disagree: [%d, %d] and [%d, %d]", lo, hi, v.Lo(), v.Hi())
				}
				lo, hi, last = v.Lo(), v.Hi(), v.Last().Number
				// Everything below Lo is in the base: at Lo the trim
				// leaves the base alone and no segment at all.
				if c, err := metaEpoch(ctx, db, "compacted_epoch"); err != nil || c != lo {
					t.Fatalf("partition %d: compacted to %d (%v), want the commit epoch %d", p, c, err, lo)
				}
				before[p] = fingerprint(t, db)
				db.Close()
			}
			if wantLo, wantHi := 16-opts.Intervals.D(), Epoch(16); lo != wantLo || hi != wantHi {
				t.Fatalf("range [%d, %d], want [%d, %d]", lo, hi, wantLo, wantHi)
			}
			e := tt.at(lo, hi)
			for p := range 2 {
				db, err := OpenDB(f.path(p), false)
				if err != nil {
					t.Fatal(err)
				}
				err = Trim(ctx, db, e, last+1, now)
				if tt.wantErr != "" {
					want := fmt.Sprintf("trim partition %d to epoch %d: %s [%d, %d]", p, e, tt.wantErr, lo, hi)
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("trim to %d: err = %v, want %q", e, err, want)
					}
					if after := fingerprint(t, db); after != before[p] {
						t.Fatalf("a refused trim changed partition %d:\n%s\nwas\n%s", p, after, before[p])
					}
					db.Close()
					continue
				}
				if err != nil {
					t.Fatalf("trim partition %d to %d in [%d, %d]: %v", p, e, lo, hi, err)
				}
				v := mustView(t, db)
				if m := v.Last(); m.Number != last+1 || m.Workers != 0 || m.ResumeEpoch != e || !m.Started.Equal(now) {
					t.Fatalf("partition %d: last execution %+v, want the marker %d with no workers resuming at %d", p, *m, last+1, e)
				}
				if v.Lo() != lo || v.Hi() != e || len(v.Fronts) != 0 {
					t.Fatalf("partition %d trimmed to %d: range [%d, %d], frontiers %v", p, e, v.Lo(), v.Hi(), v.Fronts)
				}
				var later int
				db.QueryRow(`SELECT count(*) FROM segments WHERE epoch >= ?`, e).Scan(&later)
				if later != 0 {
					t.Fatalf("partition %d: %d segments at or after %d remain", p, later, e)
				}
				if ts, err := EpochTime(ctx, db, e); err != nil || ts.IsZero() {
					t.Fatalf("partition %d: no time for epoch %d after the trim (%v)", p, e, err)
				}
				db.Close()
			}
			if tt.wantErr != "" {
				return
			}
			// The resume rule: the marker pins the next run to e.
			f.open()
			if f.next != e {
				t.Fatalf("trimmed to %d, resumed at %d", e, f.next)
			}
			views, err := f.st.Views(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ex := views[0].Last(); ex.Number != last+2 || ex.ResumeEpoch != e {
				t.Fatalf("the run after the trim is execution %d at %d, want %d at %d", ex.Number, ex.ResumeEpoch, last+2, e)
			}
			for p, part := range f.st.Partitions() {
				if d := diffState(partState(t, part.DB, e), f.m.below(e, PartitionIndex(p), 2)); d != "" {
					t.Fatalf("resumed at %d: partition %d: %s", e, p, d)
				}
			}
			// Epochs at or after e run again, with other changes.
			f.run(e + 7)
			if err := f.st.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			f.run(e + 9)
			for p, part := range f.st.Partitions() {
				v := mustView(t, part.DB)
				checkRange(t, fmt.Sprintf("trimmed to %d and run on", e), part.DB, f.m, PartitionIndex(p), 2, v.Lo(), v.Hi())
			}
			f.close()
		})
	}
}

// A marker execution must come after the partition's last one.
func TestTrim_RefusesAMarkerNotAfterTheLastExecution(t *testing.T) {
	ctx := context.Background()
	f := newTestFlow(t, 1, Options{FlowName: "f", Intervals: Intervals{Snapshot: time.Second, Backup: 2 * time.Second}}, 1, nil)
	f.run(5)
	f.close()
	f.open() // execution 1
	f.run(7)
	f.close()
	db, err := OpenDB(f.path(0), false)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	before := fingerprint(t, db)
	for _, ex := range []ExecutionNumber{0, 1} {
		err := Trim(ctx, db, 6, ex, time.Now())
		if want := fmt.Sprintf("marker execution %d is not after its last execution 1", ex); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("marker %d: err = %v, want %q", ex, err, want)
		}
	}
	if after := fingerprint(t, db); after != before {
		t.Fatalf("a refused trim changed the partition:\n%s\nwas\n%s", after, before)
	}
	if err := Trim(ctx, db, 6, 2, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// fingerprint summarises what a trim may change.
func fingerprint(t *testing.T, q queryer) string {
	t.Helper()
	var b strings.Builder
	for _, s := range []string{
		`SELECT count(*) || ' segments up to ' || coalesce(max(epoch), 0) FROM segments`,
		`SELECT count(*) || ' base rows' FROM base`,
		`SELECT coalesce(group_concat(ex_num || ':' || worker_count || '@' || resume_epoch, ' '), '') FROM executions`,
		`SELECT coalesce(group_concat(ex_num || '/' || worker_index || '=' || frontier, ' '), '') FROM fronts`,
		`SELECT coalesce(group_concat(epoch, ' '), '') FROM epoch_times`,
	} {
		var v string
		if err := q.QueryRowContext(context.Background(), s).Scan(&v); err != nil {
			t.Fatal(err)
		}
		b.WriteString(v + "; ")
	}
	return b.String()
}
