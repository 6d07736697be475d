package restore

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/recovery"
)

// Point-in-time restore (Litestream's -timestamp, pgBackRest's
// --type=time). The state a flow was in at time T is its newest epoch E
// that had closed by T (every partition's frontier had reached E; the
// next epoch closed after T): what a crash at T would have resumed from.
// A restore to T lays down that state when every partition's backups
// share E along one history, and otherwise the newest epoch before it
// that they do, and says so.
//
// Which history: the one live at T, the lineage whose latest start (its
// creation, or a claim of the flow such as a take-over) was at or before
// T; a lineage that started later is tried only when none of those can
// restore anything that old (oldest start first). Epoch numbers repeat
// across histories (a restore to an older epoch starts a lineage that
// numbers its epochs on from there), so the time of an epoch is always
// that of one history: backups of a parent count up to the fork only.
//
// When epochs closed: a manifest records it for the ends of its backup's
// range (backup.EpochCloses), so the manifests alone bound the epoch: the
// newest epoch they show closed by T (Reached) and the oldest they show
// closed after it. The plan takes the newest shared epoch below the
// latter. If that is newer than Reached, the plan is unsettled: a restore
// of every partition reads each image's exact record of its epochs' close
// times once they are fetched (recovery.EpochBy) and trims to the right
// epoch; if that lies below the chosen backups' ranges, it plans again
// with what it learned, down to older backups. A restore of some
// partitions (one machine's share of a cluster) cannot read every image,
// so it settles on the newest epoch the manifests show closed by T, which
// every machine computes alike.

// PointInTime says how a plan for a time (PlanOptions.At) chose its epoch.
type PointInTime struct {
	// At is the time asked for.
	At time.Time `json:"at"`
	// Settled says the plan's epoch closed at or before At, and no newer
	// epoch of its history that every partition's backups share did.
	// Unsettled, the epoch is the newest shared one that may have closed
	// by At, and Lower the newest the manifests show did (0: none); a
	// restore of every partition reads the images to settle it.
	Settled bool   `json:"settled"`
	Lower   uint64 `json:"lower_epoch,omitempty"`
	// Exact says the plan's epoch is the state the flow was in at At: the
	// next epoch closed after At.
	Exact bool `json:"exact"`
	// Reached is the newest epoch of the history known to have closed by
	// At (0: none known). Above the plan's epoch, the state at At is in no
	// backup of every partition, and the plan restores the newest epoch
	// before it that is.
	Reached uint64 `json:"reached_epoch,omitempty"`
	// Next, if known, is when the epoch after Reached closed (after At).
	Next time.Time `json:"next_close,omitzero"`
}

// closedBy is what the images of one history showed of its epochs' close
// times around a plan's time: reached closed by then (0: not known),
// after (and every epoch above it) closed after it (0: not known), next
// when the epoch after reached closed.
type closedBy struct {
	lineage string
	reached uint64
	after   uint64
	next    time.Time
}

// atCandidates orders the lineages a restore to at may lay down: those
// live at at first (latest start at or before it first), then those that
// started later (oldest first). Retired lineages are left out, unless one
// is asked for by id (want).
func atCandidates(sums []backup.LineageSummary, want string, at time.Time) (live, later []backup.LineageSummary, since map[string]time.Time) {
	since = map[string]time.Time{}
	first := map[string]time.Time{}
	for _, s := range sums {
		if want != "" && s.Lineage.ID != want || want == "" && s.Retired {
			continue
		}
		var best, earliest time.Time
		for _, t := range []time.Time{s.Lineage.Created, s.Claimed} {
			if t.IsZero() {
				continue
			}
			if !t.After(at) && t.After(best) {
				best = t
			}
			if earliest.IsZero() || t.Before(earliest) {
				earliest = t
			}
		}
		if !best.IsZero() {
			since[s.Lineage.ID] = best
			live = append(live, s)
		} else {
			first[s.Lineage.ID] = earliest
			later = append(later, s)
		}
	}
	sort.SliceStable(live, func(i, j int) bool { return since[live[i].Lineage.ID].After(since[live[j].Lineage.ID]) })
	sort.SliceStable(later, func(i, j int) bool { return first[later[i].Lineage.ID].Before(first[later[j].Lineage.ID]) })
	return live, later, since
}

// pointOf plans history h of one flow (usable: its usable manifests) for
// the time o.At: the newest epoch every partition's backups share that
// may have closed by then, and what is known of it. ok is false if no
// shared epoch of h is that old.
func pointOf(usable []*backup.Manifest, count int, h recovery.History, o PlanOptions) (backup.Overlap, *PointInTime, bool) {
	closes := backup.EpochCloses(usable, h)
	// after: the oldest epoch known to have closed after At (the flow's
	// close of an epoch is its last partition's).
	after, afterAt := uint64(math.MaxUint64), time.Time{}
	for _, c := range closes {
		if c.Time.After(o.At) && c.Epoch < after {
			after, afterAt = c.Epoch, c.Time
		}
	}
	k := o.known
	if k != nil && k.lineage != h.Lineage.ID {
		k = nil // another history's epochs closed at other times
	}
	if k != nil && k.after > 0 && k.after <= after {
		after, afterAt = k.after, time.Time{}
	}
	// reached: the newest epoch known to have closed by At.
	var reached uint64
	have := false
	for _, c := range closes {
		if !c.Time.After(o.At) && c.Epoch < after && (!have || c.Epoch > reached) {
			reached, have = c.Epoch, true
		}
	}
	if k != nil && k.reached > 0 && k.reached < after && (!have || k.reached >= reached) {
		reached, have = k.reached, true
		if after == reached+1 && afterAt.IsZero() {
			afterAt = k.next
		}
	}
	if after == 0 {
		return backup.Overlap{}, nil, false
	}
	ov, ok := backup.OverlapAtMost(usable, count, h, after-1)
	if !ok {
		return backup.Overlap{}, nil, false
	}
	pit := &PointInTime{At: o.At}
	if have {
		pit.Reached = reached
		if after == reached+1 {
			pit.Next = afterAt
		}
	}
	pit.Settled = have && ov.Epoch <= reached
	if !pit.Settled && have {
		if low, ok := backup.OverlapAtMost(usable, count, h, reached); ok {
			pit.Lower = low.Epoch
			if o.settledOnly {
				ov, pit.Settled, pit.Lower = low, true, 0
			}
		}
	}
	if !pit.Settled && o.settledOnly {
		return backup.Overlap{}, nil, false
	}
	pit.Exact = pit.Settled && ov.Epoch == reached && after == reached+1
	return ov, pit, true
}

// closeTime is when the flow closed epoch e as closes record it (its last
// partition's record), if they do.
func closeTime(closes []backup.EpochClose, e uint64) (time.Time, bool) {
	var t time.Time
	for _, c := range closes {
		if c.Epoch == e && c.Time.After(t) {
			t = c.Time
		}
	}
	return t, !t.IsZero()
}

// planAt plans a restore to the time o.At (see the top of this file):
// MakePlan's work once the flow, its partitions and the lineage asked for
// (lineage, "" for any) are known.
func planAt(ms, usable []*backup.Manifest, byPart [][]*backup.Manifest, count int, lineage string, o PlanOptions) (*Plan, error) {
	sums := backup.Lineages(usable, o.Registry)
	live, later, since := atCandidates(sums, lineage, o.At)
	var notes []string
	for i, sum := range append(live, later...) {
		ov, pit, ok := pointOf(usable, count, sum.History(), o)
		if !ok {
			if i < len(live) {
				notes = append(notes, fmt.Sprintf("%s, live at %s (since %s), has no state that old that every partition's backups share", sum.Describe(), fmtMs(o.At), fmtMs(since[sum.Lineage.ID])))
			}
			continue
		}
		p := planOf(ms, usable, count, ov, lineage, o)
		p.At = pit
		if t, ok := closeTime(backup.EpochCloses(usable, sum.History()), ov.Epoch); ok {
			p.EpochTime, p.EpochTimeExact = t, true
		}
		if i >= len(live) {
			notes = append(notes, fmt.Sprintf("no history live at %s can restore anything that old; restored %s, which started after it", fmtMs(o.At), sum.Describe()))
		} else if cur := current(sums); lineage == "" && cur != nil && cur.Lineage.ID != sum.Lineage.ID {
			notes = append(notes, fmt.Sprintf("the current history, lineage %s, claimed the flow after %s (at %s): restored the history live then, %s",
				cur.Lineage.Short(), fmtMs(o.At), fmtMs(cur.Claimed), sum.Describe()))
		}
		p.Notes = append(notes, p.Notes...)
		return p, nil
	}
	if o.settledOnly {
		all := o
		all.settledOnly = false
		if p, err := planAt(ms, usable, byPart, count, lineage, all); err == nil {
			return nil, fmt.Errorf("%w: the manifests do not show which epoch the flow was in at %s (at most %d), and a restore of some partitions cannot read every image to find out: restore every partition on one machine, or pin every machine with --epoch",
				ErrNotRestorable, fmtMs(o.At), p.Epoch)
		}
	}
	if pt, ok := oldestPoint(usable, count, append(live, later...)); ok {
		return nil, fmt.Errorf("%w: nothing is restorable as old as %s: the oldest restorable point is epoch %d (%s) of lineage %s",
			ErrNotRestorable, fmtMs(o.At), pt.Epoch, fmtMs(pt.Time), recovery.ShortID(pt.Lineage))
	}
	if lineage != "" {
		return nil, fmt.Errorf("%w: lineage %s cannot be restored: no epoch is covered by a backup of its history for every partition; %s", ErrNotRestorable, recovery.ShortID(lineage), explainGap(byPart))
	}
	return nil, fmt.Errorf("%w: no epoch is covered by a backup of every partition; %s", ErrNotRestorable, explainGap(byPart))
}

// current is the history a restore of the newest state prefers: the
// newest claim not retired.
func current(sums []backup.LineageSummary) *backup.LineageSummary {
	for i := range sums {
		if !sums[i].Retired {
			return &sums[i]
		}
	}
	return nil
}

// RestorePoint is one state a flow's backups can restore: an epoch of a
// lineage and when it closed.
type RestorePoint struct {
	Epoch   uint64    `json:"epoch"`
	Time    time.Time `json:"time"`
	Lineage string    `json:"lineage"`
}

// oldestPoint is the oldest state any of the histories sums can restore:
// the one whose epoch closed first (by what the manifests record).
func oldestPoint(usable []*backup.Manifest, count int, sums []backup.LineageSummary) (RestorePoint, bool) {
	var best RestorePoint
	found := false
	for _, sum := range sums {
		h := sum.History()
		ov, ok := backup.OldestOverlap(usable, count, h)
		if !ok {
			continue
		}
		t, _ := closeTime(backup.EpochCloses(usable, h), ov.Epoch)
		if !found || t.Before(best.Time) || t.Equal(best.Time) && ov.Epoch < best.Epoch {
			best, found = RestorePoint{Epoch: ov.Epoch, Time: t, Lineage: sum.Lineage.ID}, true
		}
	}
	return best, found
}

// Window is the span of states a flow's backups can restore: from the
// oldest point of any live history (what a restore to a time reaches
// back to) to the newest restore.
type Window struct {
	From RestorePoint `json:"from"`
	To   RestorePoint `json:"to"`
}

// RestorableWindow says how far back and up to where the flow o picks
// (o.FlowUID, or the one flow all holds) can be restored, along the
// histories a restore considers (o.Lineage, or those not retired). The
// error is MakePlan's when nothing is restorable.
func RestorableWindow(all []*backup.Manifest, o PlanOptions) (Window, error) {
	o.At, o.Epoch = time.Time{}, 0
	plan, err := MakePlan(all, o)
	if err != nil {
		return Window{}, err
	}
	w := Window{To: RestorePoint{Epoch: plan.Epoch, Time: plan.EpochTime, Lineage: plan.Lineage.Lineage.ID}}
	var usable []*backup.Manifest
	for _, m := range all {
		if m.Flow.UID == plan.Flow.UID && m.Partition.Count == plan.Count && !o.Exclude[m.ID] {
			usable = append(usable, m)
		}
	}
	want := ""
	if o.Lineage != "" {
		want = plan.Lineage.Lineage.ID
	}
	live, later, _ := atCandidates(backup.Lineages(usable, o.Registry), want, time.Now())
	w.From = w.To
	if pt, ok := oldestPoint(usable, plan.Count, append(live, later...)); ok && (pt.Time.Before(w.To.Time) || w.To.Time.IsZero()) {
		w.From = pt
	}
	return w, nil
}

// settleAt settles a point-in-time plan from the images fetched for it
// (see the top of this file): it reads, from every partition's image,
// which epoch the flow had reached by the plan's time, and sets the plan
// to restore it (or the newest shared epoch before it) with its exact
// close time. When that epoch lies below the chosen backups, it plans
// again, knowing more, and says so; again is then true and the caller
// fetches the new plan's backups. A plan that is not for a time, or a
// restore of some partitions only, is left as it is.
func settleAt(ctx context.Context, w *workDir, fetched map[string]string, o *Options, res *Result, cat []*backup.Manifest) (again bool, err error) {
	plan := res.Plan
	if plan.At == nil || len(res.Restored) != plan.Count {
		return false, nil
	}
	at := plan.At.At
	reached, known := uint64(math.MaxUint64), true
	// byPart[i] is what partition i's image shows it reached by at, and
	// whether the image also shows the epoch after it closed later (it
	// records epochs up to its backup's newest only).
	type shown struct {
		e       uint64
		bounded bool
	}
	byPart := make([]shown, plan.Count)
	var maxLo uint64
	dbs := make([]*recovery.Partition, plan.Count)
	defer func() {
		for _, p := range dbs {
			if p != nil {
				p.Close()
			}
		}
	}()
	for i, m := range plan.Chosen {
		name, ok := fetched[m.ID]
		if !ok {
			return false, fmt.Errorf("partition %d: backup %s was not fetched", i, m.ID)
		}
		p, err := recovery.OpenPartition(ctx, w.pathOf(name), true)
		if err == nil && p == nil {
			err = fmt.Errorf("not a recovery partition")
		}
		if err != nil {
			return false, fmt.Errorf("partition %d: read the close times of its epochs in backup %s: %w", i, m.ID, err)
		}
		dbs[i] = p
		maxLo = max(maxLo, m.Epochs.Lo)
		e, ok, _, err := recovery.EpochBy(ctx, p.DB, recovery.Epoch(m.Epochs.Lo), at)
		if err != nil {
			return false, fmt.Errorf("partition %d: read the close times of its epochs in backup %s: %w", i, m.ID, err)
		}
		if !ok {
			// Even its oldest restorable epoch closed after at.
			known = false
			if m.Epochs.Lo == 0 {
				reached = 0
			} else {
				reached = min(reached, m.Epochs.Lo-1)
			}
			continue
		}
		reached = min(reached, uint64(e))
		byPart[i] = shown{uint64(e), uint64(e) < m.Epochs.Hi}
	}
	// closeOf is when the flow closed epoch e: when its last partition
	// did (zero if some image does not record it).
	closeOf := func(e uint64) (time.Time, error) {
		var t time.Time
		for _, p := range dbs {
			pt, err := recovery.EpochTime(ctx, p.DB, recovery.Epoch(e))
			if err != nil || pt.IsZero() {
				return time.Time{}, err
			}
			if pt.After(t) {
				t = pt
			}
		}
		return t, nil
	}
	if reached < maxLo {
		// The state at the time is older than the chosen backups reach:
		// plan again, knowing that epoch reached+1 closed after it.
		k := &closedBy{lineage: plan.Lineage.Lineage.ID, after: reached + 1}
		if known {
			k.reached = reached
			if k.next, err = closeOf(reached + 1); err != nil {
				return false, err
			}
		}
		o.Plan.known = k
		next, err := MakePlan(cat, o.Plan)
		if err != nil {
			return false, fmt.Errorf("the images show epoch %d closed after %s, and without the backups of later epochs: %w", reached+1, fmtMs(at), err)
		}
		if err := opened(next, res.Restored, o.Keys); err != nil {
			return false, err
		}
		note := fmt.Sprintf("the images show the flow closed epoch %d after %s: planned again for an older epoch (at most %d)", reached+1, fmtMs(at), next.Epoch)
		res.Fallbacks = append(res.Fallbacks, note)
		o.Note(note)
		res.Plan = next
		// Images the new plan does not use only take room.
		use := map[string]bool{}
		for _, m := range next.Chosen {
			use[m.ID] = true
		}
		for id, name := range fetched {
			if !use[id] {
				w.removeDB(name)
				delete(fetched, id)
			}
		}
		return true, nil
	}
	pit := *plan.At
	pit.Settled, pit.Lower = true, 0
	e := plan.Epoch
	if known {
		e = min(e, reached)
		pit.Reached = reached // exact, where the manifests' records only bound it
		if pit.Next, err = closeOf(reached + 1); err != nil {
			return false, err
		}
	}
	// Exact: the epoch after it closed after at, as an image shows (or as
	// the images of the backups fetched before showed).
	bounded := false
	for _, b := range byPart {
		bounded = bounded || b.e == reached && b.bounded
	}
	if k := o.Plan.known; k != nil && k.lineage == plan.Lineage.Lineage.ID && k.after == reached+1 {
		bounded = true
		if pit.Next.IsZero() {
			pit.Next = k.next
		}
	}
	pit.Exact = known && e == reached && bounded
	if t, err := closeOf(e); err != nil {
		return false, err
	} else if !t.IsZero() {
		plan.EpochTime, plan.EpochTimeExact = t, true
	}
	plan.Epoch, plan.At = e, &pit
	return false, nil
}

// fmtMs is t in RFC 3339 with milliseconds, as epoch close times are
// recorded (several epochs may close within a second).
func fmtMs(t time.Time) string {
	if t.IsZero() {
		return "time unknown"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
