package recovery

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/internal/machine"
)

// A lineage is one history of a flow (Litestream calls them generations).
// `recovery init` starts the root lineage, whose id is the flow uid; every
// run whose continuity with the files' last writer cannot be proven starts a
// child lineage, recording its parent and the epoch it forked at:
//
//   - a restore (the partitions were laid down from backups: the old
//     machine may still be running);
//   - partitions copied or moved to another machine, or copied beside
//     themselves (the machine id or the file's device and inode differ from
//     those the last run recorded).
//
// Two lineages agree up to an epoch: a child's state at every epoch up to
// its fork epoch is its parent's (a restore to E keeps each key's newest
// state below E). Backups of two partitions may be combined at epoch E only
// if their lineages agree up to E, so a restore never mixes two histories.
//
// A restore marks its partitions' new lineage pending: nothing has written
// them yet. The first run adopts it; partitions restored separately from one
// plan (several machines of a cluster, each restoring its share) carry
// different pending ids of the same parent and fork epoch, and the first run
// adopts one of them for all. Partitions of two lineages are refused.

// MaxEpoch is the largest epoch: two lineages that are one agree up to it.
const MaxEpoch = Epoch(math.MaxUint64)

// Lineage is one history of a flow.
type Lineage struct {
	ID      string    `json:"id"`
	Host    string    `json:"host,omitempty"`
	Created time.Time `json:"created"`
	// Fork is the epoch this lineage started at (0 for a root): its state
	// below it is its parent's.
	Fork Epoch `json:"fork,omitempty"`
	// Reason says why it started: LineageInit, LineageRestore,
	// LineageMoved (or LineageLegacy for a flow older than lineages).
	Reason string `json:"reason,omitempty"`
	// Ancestors, parent first, back to the root.
	Ancestors []Ancestor `json:"ancestors,omitempty"`
}

// Why a lineage started.
const (
	LineageInit    = "init"
	LineageRestore = "restore"
	LineageMoved   = "moved"
	LineageLegacy  = "legacy"
)

// Run is one execution of a history: its number, the epoch it resumed at,
// and a random id, the same in every partition of the run. Partitions keep
// their last MaxRuns runs, and every backup names them, so two backups of
// one lineage are known to be one history (they share their last run, or
// one's runs extend the other's) or two: files rolled back to a snapshot
// and run again share the lineage id but not the runs after it.
type Run struct {
	N      ExecutionNumber `json:"n"`
	Resume Epoch           `json:"resume"`
	ID     string          `json:"id"`
}

// MaxRuns is how many runs a partition remembers.
const MaxRuns = 64

// RunsAgree is the highest epoch at which two histories of one lineage
// whose recent runs are a and b are one: every epoch below the first run
// either made after the last run both made. Without runs on either side
// (backups older than runs) the lineage alone decides (MaxEpoch); windows
// without a run in common are taken as two histories (0).
func RunsAgree(a, b []Run) Epoch {
	if len(a) == 0 || len(b) == 0 {
		return MaxEpoch
	}
	at := map[ExecutionNumber]int{}
	for j, r := range b {
		at[r.N] = j
	}
	for i := len(a) - 1; i >= 0; i-- {
		j, ok := at[a[i].N]
		if !ok || b[j].ID != a[i].ID {
			continue
		}
		up := MaxEpoch
		if i+1 < len(a) {
			up = min(up, a[i+1].Resume)
		}
		if j+1 < len(b) {
			up = min(up, b[j+1].Resume)
		}
		return up
	}
	return 0
}

// History is a lineage as one backup or partition knows it: the lineage
// and its recent runs.
type History struct {
	Lineage Lineage
	Runs    []Run
}

// Agree is the highest epoch at which a and b are one history: through
// their nearest common lineage, the lowest fork on the way, and where
// their runs of it part.
func Agree(a, b History) Epoch {
	type side struct {
		up   Epoch
		runs []Run
	}
	byID := map[string]side{a.Lineage.ID: {MaxEpoch, a.Runs}}
	for _, x := range a.Lineage.Ancestors {
		byID[x.ID] = side{x.Upto, x.Runs}
	}
	best := Epoch(0)
	check := func(id string, up Epoch, runs []Run) {
		if s, ok := byID[id]; ok {
			best = max(best, min(s.up, up, RunsAgree(s.runs, runs)))
		}
	}
	check(b.Lineage.ID, MaxEpoch, b.Runs)
	for _, x := range b.Lineage.Ancestors {
		check(x.ID, x.Upto, x.Runs)
	}
	return best
}

// Ancestor is a lineage this one descends from.
type Ancestor struct {
	ID string `json:"id"`
	// Upto: this lineage's state at every epoch up to Upto is the
	// ancestor's.
	Upto    Epoch     `json:"upto"`
	Host    string    `json:"host,omitempty"`
	Created time.Time `json:"created"`
	// Seen is the latest time of the ancestor's progress this lineage knew
	// of when it forked (in the ancestor's own clock: the time its newest
	// epoch closed). A backup of the ancestor whose epochs reach past Seen
	// shows the ancestor still ran after the fork.
	Seen time.Time `json:"seen,omitzero"`
	// Runs are the ancestor's recent runs as the fork knew them: its
	// backups agree with this lineage only along these.
	Runs []Run `json:"runs,omitempty"`
}

var lineageIDRE = regexp.MustCompile(`^[0-9a-f]{8,64}$`)

// MaxAncestors bounds a lineage's recorded ancestry (a restore loop of a
// thousand restores still fits; older ancestors are dropped, oldest first).
const MaxAncestors = 1000

// RootLineage is a flow's first lineage: its id is the flow uid.
func RootLineage(uid, host string, created time.Time, reason string) Lineage {
	return Lineage{ID: uid, Host: host, Created: created.UTC().Truncate(time.Millisecond), Reason: reason}
}

// NewLineageID makes a random lineage id.
func NewLineageID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // the runtime never lets this fail
	}
	return hex.EncodeToString(b[:])
}

// Child is a new lineage forked from l at epoch at: its state below at is
// l's, as its runs (l's recent runs at the fork) made it. seen is l's
// latest progress the fork knew of.
func (l Lineage) Child(id, host string, at Epoch, runs []Run, seen, now time.Time, reason string) Lineage {
	c := Lineage{ID: id, Host: host, Created: now.UTC().Truncate(time.Millisecond), Fork: at, Reason: reason}
	c.Ancestors = append(c.Ancestors, Ancestor{ID: l.ID, Upto: at, Host: l.Host, Created: l.Created, Seen: seen.UTC().Truncate(time.Millisecond), Runs: runs})
	for _, a := range l.Ancestors {
		a.Upto = min(a.Upto, at)
		c.Ancestors = append(c.Ancestors, a)
	}
	if len(c.Ancestors) > MaxAncestors {
		c.Ancestors = c.Ancestors[:MaxAncestors]
	}
	return c
}

// Parent is the lineage l forked from ("" for a root).
func (l Lineage) Parent() string {
	if len(l.Ancestors) == 0 {
		return ""
	}
	return l.Ancestors[0].ID
}

// Ancestor returns l's record of ancestor id.
func (l Lineage) Ancestor(id string) (Ancestor, bool) {
	for _, a := range l.Ancestors {
		if a.ID == id {
			return a, true
		}
	}
	return Ancestor{}, false
}

// Short is the id as messages show it.
func (l Lineage) Short() string { return ShortID(l.ID) }

// ShortID shortens a lineage id for messages.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Describe says in a few words which history l is.
func (l Lineage) Describe() string {
	s := "lineage " + l.Short()
	var bits []string
	if l.Host != "" {
		bits = append(bits, "host "+l.Host)
	}
	if p := l.Parent(); p != "" {
		bits = append(bits, fmt.Sprintf("forked from %s at epoch %d", ShortID(p), l.Fork))
	}
	if !l.Created.IsZero() {
		bits = append(bits, "since "+l.Created.UTC().Format(time.RFC3339))
	}
	if len(bits) > 0 {
		s += " (" + strings.Join(bits, ", ") + ")"
	}
	return s
}

// AgreeUpTo is the highest epoch at which lineages a and b are one
// history, by their ancestry alone: MaxEpoch if they are the same lineage;
// the lowest fork between them and their nearest common ancestor; 0 if
// they share none (see Agree, which also compares runs).
func AgreeUpTo(a, b Lineage) Epoch { return Agree(History{Lineage: a}, History{Lineage: b}) }

// Related says whether one of a and b descends from the other (or they
// are one).
func Related(a, b Lineage) bool {
	if a.ID == b.ID {
		return true
	}
	_, ok := a.Ancestor(b.ID)
	if !ok {
		_, ok = b.Ancestor(a.ID)
	}
	return ok
}

// Validate checks a lineage record read from a file or a manifest.
func (l Lineage) Validate() error {
	if !lineageIDRE.MatchString(l.ID) {
		return fmt.Errorf("lineage id %q is not hex", l.ID)
	}
	if len(l.Ancestors) > MaxAncestors || len(l.Host) > 256 || len(l.Reason) > 32 {
		return fmt.Errorf("lineage %s: record too large", l.Short())
	}
	seen := map[string]bool{l.ID: true}
	for _, a := range l.Ancestors {
		if !lineageIDRE.MatchString(a.ID) || seen[a.ID] || len(a.Host) > 256 {
			return fmt.Errorf("lineage %s: bad ancestor %q", l.Short(), a.ID)
		}
		seen[a.ID] = true
	}
	if (l.Fork == 0) != (len(l.Ancestors) == 0) || (len(l.Ancestors) > 0 && l.Ancestors[0].Upto != l.Fork) {
		return fmt.Errorf("lineage %s: fork epoch %d disagrees with its ancestry", l.Short(), l.Fork)
	}
	return nil
}

// Meta keys of the lineage and of the continuity checks.
const (
	metaLineage        = "lineage"
	metaLineagePending = "lineage_pending"
	metaMachine        = "machine_id"
	metaFileID         = "file_id"
	metaRuns           = "runs"
)

// readRuns reads a partition's recent runs.
func readRuns(ctx context.Context, q queryer) ([]Run, error) {
	raw, err := metaValue(ctx, q, metaRuns)
	if err != nil || raw == "" {
		return nil, err
	}
	var runs []Run
	if err := json.Unmarshal([]byte(raw), &runs); err != nil || len(runs) > MaxRuns {
		return nil, fmt.Errorf("meta runs: %v: %w", err, ErrCorrupt)
	}
	return runs, nil
}

// appendRun records run r as the partition's newest (runs its last ones).
func appendRun(ctx context.Context, tx execer, runs []Run, r Run) error {
	for len(runs) > 0 && runs[len(runs)-1].N >= r.N {
		runs = runs[:len(runs)-1] // a run that began and never got further
	}
	runs = append(runs, r)
	if len(runs) > MaxRuns {
		runs = runs[len(runs)-MaxRuns:]
	}
	b, _ := json.Marshal(runs)
	_, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)`, metaRuns, string(b))
	return err
}

// readLineage reads a partition's lineage; a partition older than lineages
// is of its flow's root lineage.
func readLineage(ctx context.Context, q queryer, uid string, created time.Time) (Lineage, bool, error) {
	raw, err := metaValue(ctx, q, metaLineage)
	if err != nil {
		return Lineage{}, false, err
	}
	if raw == "" {
		return RootLineage(uid, "", created, LineageLegacy), false, nil
	}
	var l Lineage
	if err := json.Unmarshal([]byte(raw), &l); err != nil {
		return Lineage{}, false, fmt.Errorf("meta lineage: %v: %w", err, ErrCorrupt)
	}
	if err := l.Validate(); err != nil {
		return Lineage{}, false, fmt.Errorf("meta lineage: %v: %w", err, ErrCorrupt)
	}
	pending, err := metaValue(ctx, q, metaLineagePending)
	return l, pending == "1", err
}

// ReadLineage reads the lineage of the partition q reads, and whether it
// is pending (restored, not run since).
func ReadLineage(ctx context.Context, q queryer) (Lineage, bool, error) {
	var uid string
	var created int64
	if err := q.QueryRowContext(ctx, `SELECT flow_uid, created_unix_ms FROM parts`).Scan(&uid, &created); err != nil {
		return Lineage{}, false, fmt.Errorf("read parts: %w", err)
	}
	return readLineage(ctx, q, uid, time.UnixMilli(created))
}

type execer interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
}

// writeLineage records l (pending or not) and the continuity marks of the
// file at path on this machine.
func writeLineage(ctx context.Context, tx execer, l Lineage, pending bool, path string) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	pend := "0"
	if pending {
		pend = "1"
	}
	_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?), (?, ?), (?, ?), (?, ?)`,
		metaLineage, string(b), metaLineagePending, pend, metaMachine, machine.ID(), metaFileID, fileID(path))
	return err
}

// MarkRestored gives a restored partition image (at path, opened as db) its
// new lineage, pending until a run adopts it.
func MarkRestored(ctx context.Context, db *sql.DB, l Lineage, path string) error {
	if err := l.Validate(); err != nil {
		return err
	}
	return writeLineage(ctx, db, l, true, path)
}

// fileID names the file at path by device and inode: a copy is another
// file, a rename within a file system the same one ("" where the system
// does not say).
func fileID(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return statID(st)
}

// moved says why the partition at path (whose view v is) may not be the
// file its last run wrote, or "" if nothing says so. A partition that never
// recorded where it ran (init, or older than lineages) is taken as is.
func moved(v *View, path string) string {
	switch {
	case v.Machine != "" && v.Machine != machine.ID():
		return "it was last run on another machine"
	case v.FileID != "" && fileID(path) != "" && v.FileID != fileID(path):
		return "it is a copy of the file its last run wrote"
	}
	return ""
}

// ErrTwoLineages says a run's partitions come from two histories.
var ErrTwoLineages = errors.New("partitions of two histories")

// LineageStart is the history a run writes under.
type LineageStart struct {
	Lineage Lineage
	// Note, if set, says the run started a new lineage, or adopted a
	// restored one, and why.
	Note string
	// Run is the run's id (see Run).
	Run string
}

// StartLineage decides, from every partition's view (all processes'), the
// lineage the run resuming at epoch at writes: the partitions' own; a
// restored one (pending) they all share, or the first of several made by
// one restore plan; or a new child when a partition was moved or copied.
// newID makes the child's id (every process of a cluster must get the same
// one). Partitions of different lineages are refused, naming them.
func StartLineage(views []*View, at Epoch, newID func() string, now time.Time) (LineageStart, error) {
	if len(views) == 0 {
		return LineageStart{}, fmt.Errorf("%w: no views", ErrNoPartitions)
	}
	sorted := append([]*View(nil), views...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Index < sorted[j].Index })
	var live, pend []*View
	for _, v := range sorted {
		if v.Pending {
			pend = append(pend, v)
		} else {
			live = append(live, v)
		}
	}
	// The first start after a restore records the restored lineage on one
	// partition after another: one that crashed part-way left some of them
	// on it already. They count with the restored ones, not as another
	// history (nothing ran on them: every partition starts before any
	// commit).
	var started []*View
	if len(pend) > 0 {
		p := pend[0].Lineage
		rest := live[:0:0]
		for _, v := range live {
			if v.Lineage.Reason == LineageRestore && v.Lineage.Parent() == p.Parent() && v.Lineage.Fork == p.Fork && v.Lineage.ID != p.Parent() {
				started = append(started, v)
			} else {
				rest = append(rest, v)
			}
		}
		live = rest
		if err := CheckOneHistory(started); err != nil {
			return LineageStart{}, err
		}
	}
	if err := CheckOneHistory(live); err != nil {
		return LineageStart{}, err
	}
	if len(pend) > 0 {
		order, by := groupViews(pend, func(v *View) string {
			return fmt.Sprintf("%s@%d", v.Lineage.Parent(), v.Lineage.Fork)
		})
		if len(order) > 1 {
			var parts []string
			for _, k := range order {
				l := by[k][0].Lineage
				parts = append(parts, fmt.Sprintf("%s restored at epoch %d of lineage %s", nameViews(by[k]), l.Fork, ShortID(l.Parent())))
			}
			return LineageStart{}, fmt.Errorf("%w: %s: every machine must restore one plan; pin it with flowbackup restore --lineage ID --epoch E on each (flowbackup restore --dry-run --json prints the plan)",
				ErrTwoLineages, strings.Join(parts, "; "))
		}
		// Restores of one plan: adopt the smallest of their ids (every
		// process picks the same).
		l := pend[0].Lineage
		for _, v := range pend[1:] {
			if v.Lineage.ID < l.ID {
				l = v.Lineage
			}
		}
		if len(started) > 0 {
			// The crashed start had chosen already.
			l = started[0].Lineage
		}
		if len(live) > 0 && live[0].Lineage.ID != l.Parent() {
			return LineageStart{}, fmt.Errorf("%w: %s restored from %s, but %s of %s: restore every partition from one backup (flowbackup restore --force), or put back the files of one history",
				ErrTwoLineages, nameViews(pend), ShortID(l.Parent()), nameViews(live), live[0].Lineage.Describe())
		}
		if at != l.Fork {
			return LineageStart{}, fmt.Errorf("%w: %s were restored to epoch %d, but the flow resumes at epoch %d: restore every partition from one backup (flowbackup restore --force)",
				ErrTwoLineages, nameViews(pend), l.Fork, at)
		}
		return LineageStart{Lineage: l, Run: newID(), Note: fmt.Sprintf("restored from a backup: this run starts %s", l.Describe())}, nil
	}
	l := live[0].Lineage
	for _, v := range live {
		if v.Moved == "" {
			continue
		}
		var seen time.Time
		for _, w := range live {
			seen = later(seen, w.LastTime)
		}
		c := l.Child(newID(), machine.Host(), at, live[0].Runs, seen, now, LineageMoved)
		return LineageStart{Lineage: c, Run: newID(), Note: fmt.Sprintf("partition %d: %s, so this run starts a new history, %s (another machine may still run the old one)", v.Index, v.Moved, c.Describe())}, nil
	}
	return LineageStart{Lineage: l, Run: newID()}, nil
}

// CheckOneHistory refuses partitions (not restored ones: see
// StartLineage) that are not one history: of two lineages (files copied
// from two machines), or of one lineage but not all of its last runs (one
// put back from an older copy).
func CheckOneHistory(live []*View) error {
	if order, by := groupViews(live, func(v *View) string { return v.Lineage.ID }); len(order) > 1 {
		var parts []string
		for _, id := range order {
			parts = append(parts, fmt.Sprintf("%s of %s", nameViews(by[id]), by[id][0].Lineage.Describe()))
		}
		return fmt.Errorf("%w: %s: they come from two histories (files copied from two machines, or restored at different times); restore every partition from one backup (flowbackup restore --force), or put back the files of one history",
			ErrTwoLineages, strings.Join(parts, "; "))
	}
	if len(live) == 0 {
		return nil
	}
	return sameRuns(live, nameViews)
}

func groupViews(vs []*View, key func(*View) string) (order []string, by map[string][]*View) {
	by = map[string][]*View{}
	for _, v := range vs {
		k := key(v)
		if by[k] == nil {
			order = append(order, k)
		}
		by[k] = append(by[k], v)
	}
	return order, by
}

func nameViews(vs []*View) string {
	var idx []string
	for _, v := range vs {
		idx = append(idx, fmt.Sprint(v.Index))
	}
	what := "partition "
	if len(vs) > 1 {
		what = "partitions "
	}
	return what + strings.Join(idx, ", ")
}

// sameRuns refuses partitions of one lineage that did not take part in
// the same runs: one was put back from an older copy (a snapshot, a file
// copied over it), so its history is not the others'. A partition may
// only miss runs that made no progress (a start that crashed before it
// reached every partition), and must hold the epochs they resumed at.
func sameRuns(live []*View, name func([]*View) string) error {
	var newest *View
	for _, v := range live {
		if len(v.Runs) > 0 && (newest == nil || v.Runs[len(v.Runs)-1].N > newest.Runs[len(newest.Runs)-1].N) {
			newest = v
		}
	}
	if newest == nil {
		return nil // partitions older than runs
	}
	top := newest.Runs[len(newest.Runs)-1]
	var behind []*View
	for _, v := range live {
		if !caughtUp(v, newest.Runs) {
			behind = append(behind, v)
		}
	}
	if len(behind) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s did not take part in the last runs of the others (up to execution %d): put back from an older copy (a disk or VM snapshot, a file copied over it)? Their histories differ; restore every partition from one backup (flowbackup restore --force)",
		ErrTwoLineages, name(behind), top.N)
}

// caughtUp says whether partition v took part in every run of runs that
// made progress, the last one included.
func caughtUp(v *View, runs []Run) bool {
	if len(v.Runs) == 0 {
		// It never took part in a run (its first start crashed before it
		// got there, or it is older than runs): only runs without progress
		// may have passed it by.
		return missedNoProgress(v, runs)
	}
	mine := v.Runs[len(v.Runs)-1]
	for j := len(runs) - 1; j >= 0; j-- {
		if runs[j].N != mine.N {
			continue
		}
		return runs[j].ID == mine.ID && missedNoProgress(v, runs[j+1:])
	}
	return false
}

// missedNoProgress says whether the runs v missed made no progress (each
// resumed where the last one did) and v holds the epochs below it.
func missedNoProgress(v *View, missed []Run) bool {
	for _, r := range missed {
		if r.Resume != missed[len(missed)-1].Resume || v.Hi() < r.Resume {
			return false
		}
	}
	return true
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
