package restore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/recovery"
)

// ForkMessage says that two machines run one flow, which histories they
// write, which one restore uses, and what to do.
func ForkMessage(flow string, f backup.Fork, restored string) string {
	side := func(s backup.LineageSummary) string {
		hosts := strings.Join(s.Hosts, ", ")
		if hosts == "" {
			hosts = s.Lineage.Host
		}
		if hosts == "" {
			hosts = "unknown"
		}
		since := s.Lineage.Created
		if since.IsZero() {
			since = s.First
		}
		return fmt.Sprintf("host %s (lineage %s, since %s)", hosts, s.Lineage.Short(), fmtT(since))
	}
	return fmt.Sprintf("two machines are backing up flow %s: %s and %s; %s. Restore uses lineage %s (--lineage picks the other). Stop one machine's flowrun and agent, then retire its lineage (flowbackup prune --retire-lineage ID); or run the agent of the one to keep with --take-over",
		flow, side(f.A), side(f.B), f.Why, recovery.ShortID(restored))
}

// Errors a caller acts on.
var (
	// ErrNotRestorable: no epoch is covered by a usable backup of every
	// partition.
	ErrNotRestorable = errors.New("not restorable")
	// ErrAmbiguous: the store holds several flows and none was chosen.
	ErrAmbiguous = errors.New("several flows in one place")
	// ErrNoSuchEpoch: the flow is restorable, but not to the epoch asked
	// for (PlanOptions.Epoch).
	ErrNoSuchEpoch = errors.New("epoch not restorable")
	// ErrNoSuchLineage: the lineage asked for (PlanOptions.Lineage) has no
	// backups here, or is named ambiguously.
	ErrNoSuchLineage = backup.ErrNoSuchLineage
)

// Plan is what a restore will lay down.
type Plan struct {
	Flow  backup.FlowRef
	Count int
	// Epoch is the epoch every restored partition will resume at.
	Epoch     uint64
	EpochTime time.Time
	// EpochTimeExact says the backups record when Epoch closed; otherwise
	// EpochTime is the earliest time they know after it (a restore reads
	// the exact one from the images it lays down).
	EpochTimeExact bool
	// Chosen[i] is partition i's backup.
	Chosen []*backup.Manifest
	// Execution is the marker execution number written by the trim.
	Execution int64
	// Lineage is the history restored: the newest one every partition can
	// reach, or the one asked for.
	Lineage backup.LineageSummary
	// Notes say what the plan passed over (a newer lineage it could not
	// reach) and which other histories are alive (forks).
	Notes []string
	// At says how a plan for a point in time (PlanOptions.At) chose
	// Epoch (nil otherwise).
	At *PointInTime
}

// PlanOptions narrow a plan.
type PlanOptions struct {
	// FlowUID picks a flow when the store holds several.
	FlowUID string
	// Epoch, if non-zero, restores exactly this epoch instead of the latest.
	Epoch uint64
	// Exclude lists manifests (by id) known to be unusable.
	Exclude map[string]bool
	// Lineage, if set, restores this lineage (an id, or a unique prefix of
	// one) instead of the newest one every partition can reach.
	Lineage string
	// Registry is the flow's lineage registry (nil: order lineages by
	// creation alone).
	Registry *backup.Registry
	// Trusted are the public keys whose signatures a plan believes (see
	// backup.ReadPolicy); a signed location needs them.
	Trusted *backup.TrustedKeys
	// At, if set, restores the state the flow was in at that time: the
	// newest epoch at or before it that every partition's backups share
	// along one history, the history live at At (see PointInTime). It
	// excludes Epoch.
	At time.Time

	// What a restore learned from the images of one history about when
	// its epochs closed (see settleAt), and whether the plan must be
	// settled from the manifests alone (a restore of some partitions,
	// which cannot read every image).
	known       *closedBy
	settledOnly bool
}

// Flows lists the flows in ms, by uid.
func flowsOf(ms []*backup.Manifest) map[string]backup.FlowRef {
	out := map[string]backup.FlowRef{}
	for _, m := range ms {
		out[m.Flow.UID] = m.Flow
	}
	return out
}

func describeFlows(fs map[string]backup.FlowRef) string {
	var parts []string
	for uid, f := range fs {
		parts = append(parts, fmt.Sprintf("%s (%s)", uid, f.Name))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// PickFlow returns the manifests of the one flow ms holds, or of o.FlowUID.
func PickFlow(ms []*backup.Manifest, uid string) ([]*backup.Manifest, error) {
	fs := flowsOf(ms)
	if uid == "" {
		switch len(fs) {
		case 0:
			return nil, fmt.Errorf("%w: there are no backups", ErrNotRestorable)
		case 1:
			for u := range fs {
				uid = u
			}
		default:
			return nil, fmt.Errorf("%w: backups of %d flows share this location: %s; choose one with --flow", ErrAmbiguous, len(fs), describeFlows(fs))
		}
	}
	var out []*backup.Manifest
	for _, m := range ms {
		if m.Flow.UID == uid {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no backups of flow %s here (flows: %s)", ErrNotRestorable, uid, describeFlows(fs))
	}
	return out, nil
}

// PlanFrom reads the store's catalog and lineage registry and plans a
// restore.
func PlanFrom(ctx context.Context, s backup.Store, o PlanOptions) (*Plan, error) {
	return PlanFromAll(ctx, []backup.Store{s}, o, nil)
}

// resolveLineage finds the lineage id or unique id prefix want among ms.
func resolveLineage(ms []*backup.Manifest, want string) (string, error) {
	ids := map[string]bool{}
	for _, m := range ms {
		ids[m.LineageOf().ID] = true
	}
	want = strings.ToLower(want)
	if ids[want] {
		return want, nil
	}
	var hits []string
	for id := range ids {
		if strings.HasPrefix(id, want) {
			hits = append(hits, id)
		}
	}
	sort.Strings(hits)
	all := make([]string, 0, len(ids))
	for id := range ids {
		all = append(all, id)
	}
	sort.Strings(all)
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		return "", fmt.Errorf("%w: no backups of lineage %q here (lineages: %s; flowbackup list shows them)", ErrNoSuchLineage, want, strings.Join(all, ", "))
	}
	return "", fmt.Errorf("%w: %q names %d lineages (%s); give more of the id", ErrNoSuchLineage, want, len(hits), strings.Join(hits, ", "))
}

// MakePlan chooses the latest epoch (or o.Epoch) every partition's usable
// backups contain, and the newest backup of each partition containing it.
// When there is none, the error names the partitions that keep the ranges
// apart and what to do.
func MakePlan(all []*backup.Manifest, o PlanOptions) (*Plan, error) {
	ms, err := PickFlow(all, o.FlowUID)
	if err != nil {
		return nil, err
	}
	count := flowCount(ms, o.Exclude)
	var usable []*backup.Manifest
	for _, m := range ms {
		if m.Partition.Count != count {
			continue // a stray of another partition count: not this flow's shape
		}
		if !o.Exclude[m.ID] {
			usable = append(usable, m)
		}
	}
	byPart := make([][]*backup.Manifest, count)
	for _, m := range usable {
		byPart[m.Partition.Index] = append(byPart[m.Partition.Index], m)
	}
	var missing []string
	for i, l := range byPart {
		if len(l) == 0 {
			missing = append(missing, fmt.Sprint(i))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: flow %s has %d partitions, but partitions %s have no usable backup; back them up (flowbackup backup -r DIR on the machines that hold them)",
			ErrNotRestorable, ms[0].Flow.Name, count, strings.Join(missing, ", "))
	}
	lineage := ""
	if o.Lineage != "" {
		if lineage, err = resolveLineage(ms, o.Lineage); err != nil {
			return nil, err
		}
	}
	if !o.At.IsZero() {
		if o.Epoch > 0 {
			return nil, fmt.Errorf("restore to an epoch or to a time, not both (epoch %d, time %s)", o.Epoch, fmtT(o.At))
		}
		return planAt(ms, usable, byPart, count, lineage, o)
	}
	var ov backup.Overlap
	var ok bool
	if o.Epoch > 0 {
		ov, ok = backup.PlanLineage(usable, count, o.Registry, lineage, o.Epoch)
		if !ok {
			newest, any := backup.PlanLineage(usable, count, o.Registry, lineage, 0)
			oldest := uint64(0)
			for _, l := range byPart {
				lo := uint64(1 << 63)
				for _, m := range l {
					lo = min(lo, m.Epochs.Lo)
				}
				oldest = max(oldest, lo)
			}
			switch {
			case any && o.Epoch > newest.Epoch:
				return nil, fmt.Errorf("%w: epoch %d is newer than the newest restorable epoch, %d (%s); restore without --epoch to get it", ErrNoSuchEpoch, o.Epoch, newest.Epoch, fmtT(OverlapTime(newest)))
			case any && o.Epoch < oldest:
				return nil, fmt.Errorf("%w: epoch %d is older than every partition's oldest kept backup allows (the oldest restorable epoch is about %d; older backups were pruned)", ErrNoSuchEpoch, o.Epoch, oldest)
			case any:
				return nil, fmt.Errorf("%w: epoch %d is not covered by a usable backup of every partition (the newest restorable epoch is %d); %s", ErrNoSuchEpoch, o.Epoch, newest.Epoch, explainGap(byPart))
			}
			return nil, fmt.Errorf("%w: epoch %d is not covered by a usable backup of every partition; %s", ErrNotRestorable, o.Epoch, explainGap(byPart))
		}
	} else if ov, ok = backup.PlanLineage(usable, count, o.Registry, lineage, 0); !ok {
		if lineage != "" {
			return nil, fmt.Errorf("%w: lineage %s cannot be restored: no epoch is covered by a backup of its history for every partition; %s", ErrNotRestorable, recovery.ShortID(lineage), explainGap(byPart))
		}
		return nil, fmt.Errorf("%w: no epoch is covered by a backup of every partition; %s", ErrNotRestorable, explainGap(byPart))
	}
	return planOf(ms, usable, count, ov, lineage, o), nil
}

// planOf is the plan that restores overlap ov of flow ms (usable: the
// manifests it may use), with notes on the lineages it passed over (for a
// plan of the newest state) and the forks it sees.
func planOf(ms, usable []*backup.Manifest, count int, ov backup.Overlap, lineage string, o PlanOptions) *Plan {
	p := &Plan{Flow: ms[0].Flow, Count: count, Epoch: ov.Epoch, Chosen: ov.Chosen}
	sums := backup.Lineages(usable, o.Registry)
	for _, sum := range sums {
		if sum.Lineage.ID == ov.Lineage.ID {
			p.Lineage = sum
			break
		}
		if lineage == "" && !sum.Retired && o.At.IsZero() {
			p.Notes = append(p.Notes, fmt.Sprintf("the newer %s cannot be restored: not every partition has a backup of its history", sum.Describe()))
		}
	}
	for _, f := range backup.Forks(sums) {
		p.Notes = append(p.Notes, ForkMessage(p.Flow.Name, f, ov.Lineage.ID))
	}
	for _, m := range ov.Chosen {
		p.Execution = max(p.Execution, m.Execution+1)
		p.Flow = m.Flow
	}
	p.EpochTime, p.EpochTimeExact = epochTime(ov)
	return p
}

// flowCount is the partition count of one flow's backups: the count most
// usable manifests claim (a flow's count never changes, so others are
// strays). Ties go to the count whose manifests cover more partitions, then
// to the smaller count.
func flowCount(ms []*backup.Manifest, exclude map[string]bool) int {
	votes := map[int]int{}
	parts := map[int]map[int]bool{}
	for _, m := range ms {
		if exclude[m.ID] {
			continue
		}
		c := m.Partition.Count
		votes[c]++
		if parts[c] == nil {
			parts[c] = map[int]bool{}
		}
		parts[c][m.Partition.Index] = true
	}
	best := 0
	for c, v := range votes {
		switch {
		case best == 0, v > votes[best],
			v == votes[best] && len(parts[c]) > len(parts[best]),
			v == votes[best] && len(parts[c]) == len(parts[best]) && c < best:
			best = c
		}
	}
	if best == 0 && len(exclude) > 0 {
		return flowCount(ms, nil) // every manifest excluded: their shape
	}
	return best
}

// OverlapTime is when the flow reached an overlap's epoch, as its backups
// tell (what restore, verify and list all report for it).
func OverlapTime(ov backup.Overlap) time.Time {
	t, _ := epochTime(ov)
	return t
}

// epochTime is when the flow reached the plan's epoch, as the backups tell
// (exact): the time recorded with it by a partition whose hi or lo it is.
// Otherwise the earliest hi time of the chosen backups is the earliest
// time known after it (not exact).
func epochTime(ov backup.Overlap) (time.Time, bool) {
	var t time.Time
	for _, m := range ov.Chosen {
		if m.Epochs.Hi == ov.Epoch && (t.IsZero() || m.Epochs.HiTime.Before(t)) {
			t = m.Epochs.HiTime
		}
	}
	if !t.IsZero() {
		return t, true
	}
	for _, m := range ov.Chosen {
		if m.Epochs.Lo == ov.Epoch && !m.Epochs.LoTime.IsZero() {
			return m.Epochs.LoTime, true
		}
	}
	for _, m := range ov.Chosen {
		if t.IsZero() || m.Epochs.HiTime.Before(t) {
			t = m.Epochs.HiTime
		}
	}
	return t, false
}

// explainGap names the two partitions whose backups are furthest apart: the
// one whose oldest restorable epoch is newest and the one whose newest
// restorable epoch is oldest.
func explainGap(byPart [][]*backup.Manifest) string {
	late, early := -1, -1
	var lateLo, earlyHi uint64
	var lateT, earlyT time.Time
	for i, l := range byPart {
		lo, hi := uint64(1<<63), uint64(0)
		var loT, hiT time.Time
		for _, m := range l {
			if m.Epochs.Lo < lo {
				lo, loT = m.Epochs.Lo, m.Epochs.LoTime
			}
			if m.Epochs.Hi > hi {
				hi, hiT = m.Epochs.Hi, m.Epochs.HiTime
			}
		}
		if late < 0 || lo > lateLo {
			late, lateLo, lateT = i, lo, loT
		}
		if early < 0 || hi < earlyHi {
			early, earlyHi, earlyT = i, hi, hiT
		}
	}
	var iv string
	for _, l := range byPart {
		for _, m := range l {
			if m.Intervals.BackupMs > 0 {
				iv = fmt.Sprintf(" (the flow runs with -b %v)", time.Duration(m.Intervals.BackupMs)*time.Millisecond)
			}
		}
	}
	if lateLo > earlyHi {
		return fmt.Sprintf("partition %d's backups start at epoch %d (%s) but partition %d's end at epoch %d (%s): they were taken too far apart%s. "+
			"Back up every partition at least once per backup interval (a schedule no sparser than -b), or run flowrun with a longer -b",
			late, lateLo, fmtT(lateT), early, earlyHi, fmtT(earlyT), iv)
	}
	return fmt.Sprintf("the partitions' backups leave gaps between them%s: back up every partition at least once per backup interval, or run flowrun with a longer -b", iv)
}

func fmtT(t time.Time) string {
	if t.IsZero() {
		return "time unknown"
	}
	return t.UTC().Format(time.RFC3339)
}
