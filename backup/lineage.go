package backup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flowkeep/flowkeep/internal/machine"
	"github.com/flowkeep/flowkeep/recovery"
)

// Lineages in a location (see recovery's lineage doc). Every manifest names
// the lineage of the partition it captured, with its ancestry, so restore
// combines backups only along one history. Which lineage is current is
// decided by the location's lineage registry, a few tiny objects whose
// names say everything:
//
//	lineages/<flow-uid>/<lineage>/claim-<time>-<rand>.json    the lineage claims the flow from <time> on
//	lineages/<flow-uid>/<lineage>/fenced-<time>-<rand>.json   its agent saw a newer claim and stopped
//	lineages/<flow-uid>/<lineage>/retired-<time>-<rand>.json  an operator retired it (prune --retire-lineage)
//
// A lineage's first backup claims the flow at the lineage's creation time;
// `--take-over` claims it now. A backup whose lineage is not the newest
// claim is fenced: it stops, so a revived old machine cannot interleave
// with the new one. Restore prefers the newest claim.

// LineagesPrefix is where the lineage registry lives.
const LineagesPrefix = "lineages/"

// Lineage events.
const (
	EventClaim   = "claim"
	EventFenced  = "fenced"
	EventRetired = "retired"
)

var lineageEventRE = regexp.MustCompile(`^([0-9a-f]{8,64})/([0-9a-f]{8,64})/(claim|fenced|retired)-(\d{8}T\d{6}\.\d{3}Z)-[0-9a-f]{8}\.json$`)

// ErrFenced says a backup was refused because a newer lineage of its flow
// claims the location.
var ErrFenced = errors.New("fenced: a newer lineage of this flow claims the backups")

// LineageOf is the lineage of the partition the manifest captured: the
// flow's root lineage for backups older than lineages.
func (m *Manifest) LineageOf() recovery.Lineage {
	if m.Lineage != nil {
		return *m.Lineage
	}
	return recovery.Lineage{ID: m.Flow.UID, Reason: recovery.LineageLegacy}
}

// History is the history of the partition the manifest captured: its
// lineage and recent runs.
func (m *Manifest) History() recovery.History {
	return recovery.History{Lineage: m.LineageOf(), Runs: m.Runs}
}

// Registry is a flow's lineage registry as listed.
type Registry struct {
	events map[string]map[string]time.Time // lineage -> kind -> latest time
}

// LoadRegistry lists flow uid's lineage registry (one LIST, no reads).
func LoadRegistry(ctx context.Context, s Store, uid string) (*Registry, error) {
	return LoadRegistryWith(ctx, s, uid, RegistryPolicy{})
}

// LoadRegistryTrusted is LoadRegistryWith believing only events signed by
// one of trusted's keys (nil: every event).
func LoadRegistryTrusted(ctx context.Context, s Store, uid string, trusted *TrustedKeys) (*Registry, error) {
	return LoadRegistryWith(ctx, s, uid, RegistryPolicy{Trusted: trusted})
}

// RegistryPolicy says which registry events a reader believes.
type RegistryPolicy struct {
	// Trusted, if set (a signed location), believes only events signed by
	// one of its keys: a writer without a trusted signing key can neither
	// fence an agent nor retire a lineage nor decide which history restore
	// prefers.
	Trusted *TrustedKeys
	// Auth, if set (an encrypted location), believes only events tagged
	// under one of its keys (see IndexAuth): the same, against a writer
	// without the recipients' public keys.
	Auth *IndexAuth
}

// LoadRegistryWith lists flow uid's lineage registry and keeps the events
// p believes. With neither keys nor tags to check, an event's name says
// all (one LIST, no reads); otherwise each event's body is read and
// checked, once per process (events never change).
func LoadRegistryWith(ctx context.Context, s Store, uid string, p RegistryPolicy) (*Registry, error) {
	r := &Registry{events: map[string]map[string]time.Time{}}
	now := time.Now()
	type ev struct {
		key, id, kind string
		at            time.Time
	}
	var evs []ev
	err := s.List(ctx, LineagesPrefix+uid+"/", "", func(oi ObjectInfo) error {
		g := lineageEventRE.FindStringSubmatch(strings.TrimPrefix(oi.Key, LineagesPrefix))
		if g == nil || g[1] != uid {
			return nil // not ours to trust
		}
		at, err := time.Parse("20060102T150405.000Z", g[4])
		if err != nil || at.After(now.Add(FutureSkew)) {
			return nil // a claim from the future would fence everyone forever
		}
		evs = append(evs, ev{oi.Key, g[2], g[3], at})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the lineage registry of flow %s: %w", uid, err)
	}
	for _, e := range evs {
		if p.Trusted != nil || p.Auth != nil {
			st, err := readEvent(ctx, s, e.key, uid, e.id, e.kind, e.at)
			if err != nil {
				return nil, err
			}
			if st == nil || p.Trusted != nil && !p.Trusted.verify(st.Sig, "lineage event", st.SHA256) ||
				p.Auth != nil && !p.Auth.verify(st.Auth, "lineage event", st.SHA256) {
				continue
			}
		}
		r.add(e.id, e.kind, e.at)
	}
	return r, nil
}

// readEvents remembers registry objects read and found whole, by store
// and key (objects are written once and never change; a copy in another
// location is read on its own).
var readEvents sync.Map

// readEvent reads a registry object and returns it if it is whole and says
// what its key says (nil if not, or if it is gone).
func readEvent(ctx context.Context, s Store, key, uid, id, kind string, at time.Time) (*storedEvent, error) {
	cacheKey := s.String() + "\x00" + key
	if st, ok := readEvents.Load(cacheKey); ok {
		return st.(*storedEvent), nil
	}
	b, err := ReadAll(ctx, s, key, 1<<20)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	var st storedEvent
	if decodeOne(b, &st) != nil {
		return nil, nil
	}
	sum := sha256.Sum256(st.Event)
	if hex.EncodeToString(sum[:]) != st.SHA256 {
		return nil, nil
	}
	var e lineageEvent
	if decodeOne(st.Event, &e) != nil || e.Kind != kind || e.Flow != uid || e.ID != id || !e.At.Equal(at) {
		return nil, nil
	}
	readEvents.Store(cacheKey, &st)
	return &st, nil
}

// storedEvent is the stored form of a registry object: the event, its
// sha256, and the signature of that (in a signed location) and its tags
// (in an encrypted one).
type storedEvent struct {
	Event  json.RawMessage `json:"event"`
	SHA256 string          `json:"sha256"`
	Sig    *Signature      `json:"sig,omitempty"`
	Auth   []string        `json:"auth,omitempty"`
}

func (r *Registry) add(id, kind string, at time.Time) {
	if r.events[id] == nil {
		r.events[id] = map[string]time.Time{}
	}
	if at.After(r.events[id][kind]) {
		r.events[id][kind] = at
	}
}

func (r *Registry) at(id, kind string) time.Time {
	if r == nil {
		return time.Time{}
	}
	return r.events[id][kind]
}

// Claimed is when lineage id last claimed the flow (zero: never).
func (r *Registry) Claimed(id string) time.Time { return r.at(id, EventClaim) }

// Fenced is when lineage id's agent last stopped for a newer claim, if
// after its last claim (zero otherwise).
func (r *Registry) Fenced(id string) time.Time {
	if f := r.at(id, EventFenced); f.After(r.Claimed(id)) {
		return f
	}
	return time.Time{}
}

// Retired says an operator retired lineage id after its last claim.
func (r *Registry) Retired(id string) bool {
	ret := r.at(id, EventRetired)
	return !ret.IsZero() && !r.Claimed(id).After(ret)
}

// IDs lists the lineages the registry knows.
func (r *Registry) IDs() []string {
	if r == nil {
		return nil
	}
	out := make([]string, 0, len(r.events))
	for id := range r.events {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// claimOf is when l holds its claim from: its registered claim, else its
// creation.
func (r *Registry) claimOf(l recovery.Lineage) time.Time {
	c := r.Claimed(l.ID)
	if c.IsZero() {
		return l.Created
	}
	return c
}

// newerClaim returns a lineage other than l that claimed the flow after l
// did and is not retired: l is fenced by it.
func (r *Registry) newerClaim(l recovery.Lineage) (string, time.Time, bool) {
	mine := r.claimOf(l)
	best, at := "", time.Time{}
	for _, id := range r.IDs() {
		c := r.Claimed(id)
		if id == l.ID || c.IsZero() || r.Retired(id) || !c.After(mine) {
			continue
		}
		if c.After(at) {
			best, at = id, c
		}
	}
	return best, at, best != ""
}

// lineageEvent is a registry object's event. Unchecked, its key says all
// that flowkeep reads; signed or tagged, the event must say what its key
// says. Host and Lineage are for people reading the bucket, and left out
// in an encrypted location, whose bucket names no hosts.
type lineageEvent struct {
	Kind    string            `json:"kind"`
	Flow    string            `json:"flow"`
	ID      string            `json:"id"`
	At      time.Time         `json:"at"`
	Host    string            `json:"host"`
	Lineage *recovery.Lineage `json:"lineage,omitempty"`
	By      string            `json:"by,omitempty"`
}

// writeEvent records a lineage event in the registry, signed with k if
// set, tagged under auth if set (an encrypted location: then without host
// or lineage).
func writeEvent(ctx context.Context, s Store, uid, id, kind string, at time.Time, ev lineageEvent, k *SigningKey, auth *IndexAuth) error {
	var r [4]byte
	rand.Read(r[:])
	at = at.UTC().Truncate(time.Millisecond)
	key := fmt.Sprintf("%s%s/%s/%s-%s-%s.json", LineagesPrefix, uid, id, kind, at.Format("20060102T150405.000Z"), hex.EncodeToString(r[:]))
	ev.Kind, ev.Flow, ev.ID, ev.At, ev.Host = kind, uid, id, at, machine.Host()
	if auth != nil {
		ev.Host, ev.Lineage = "", nil
	}
	body, _ := json.Marshal(ev)
	sum := sha256.Sum256(body)
	digest := hex.EncodeToString(sum[:])
	b, _ := json.Marshal(storedEvent{Event: body, SHA256: digest, Sig: k.sign("lineage event", digest), Auth: auth.tags("lineage event", digest)})
	if err := s.PutIfAbsent(ctx, key, b); err != nil && !errors.Is(err, ErrExists) {
		return fmt.Errorf("record lineage %s %s: %w", recovery.ShortID(id), kind, err)
	}
	return nil
}

// RetireLineage records that an operator retired lineage id of flow uid:
// it no longer counts as a live history (verify stops reporting its fork,
// restore does not pick it unless asked); its backups stay usable where
// they agree with another lineage. In a signed location only a retirement
// signed with a trusted key (k) counts; in an encrypted one, only one
// tagged under a recipient's key (auth).
func RetireLineage(ctx context.Context, s Store, uid, id string, now time.Time, k *SigningKey, auth *IndexAuth) error {
	return writeEvent(ctx, s, uid, id, EventRetired, now, lineageEvent{}, k, auth)
}

// LineageGate is what a backup learned about its flow's lineages before
// it started.
type LineageGate struct {
	Lineage recovery.Lineage
	// Fenced: a newer lineage claims the flow (By, claimed at At).
	Fenced bool
	By     string
	At     time.Time
	// Retired says the lineage itself was retired by an operator (a
	// fence without a newer claim).
	Retired bool
	// TookOver says this backup claimed the flow now (--take-over).
	TookOver bool
	// Fork, if set, says another history of the flow is alive.
	Fork string
}

// gateLineage checks l against its flow's registry before a backup:
// claims the flow for l if it never did (at l's creation), or now with
// takeOver; reports fencing (recording it once) and forks it can see.
func gateLineage(ctx context.Context, s Store, uid string, l recovery.Lineage, takeOver bool, k *SigningKey, trusted *TrustedKeys, auth *IndexAuth, now time.Time) (*LineageGate, error) {
	if k != nil {
		trusted = k.Public().With(trusted)
	}
	reg, err := LoadRegistryWith(ctx, s, uid, RegistryPolicy{Trusted: trusted, Auth: auth})
	if err != nil {
		return nil, err
	}
	g := &LineageGate{Lineage: l}
	by, at, newer := reg.newerClaim(l)
	retired := reg.Retired(l.ID)
	switch {
	case (newer || retired) && takeOver:
		if err := writeEvent(ctx, s, uid, l.ID, EventClaim, now, lineageEvent{Lineage: &l}, k, auth); err != nil {
			return nil, err
		}
		g.TookOver = true
		reg.add(l.ID, EventClaim, now)
	case newer || retired:
		g.Fenced, g.By, g.At, g.Retired = true, by, at, retired && !newer
		if reg.Fenced(l.ID).IsZero() {
			if err := writeEvent(ctx, s, uid, l.ID, EventFenced, now, lineageEvent{By: by}, k, auth); err != nil {
				return nil, err
			}
			reg.add(l.ID, EventFenced, now)
		}
	case reg.Claimed(l.ID).IsZero():
		if err := writeEvent(ctx, s, uid, l.ID, EventClaim, l.Created, lineageEvent{Lineage: &l}, k, auth); err != nil {
			return nil, err
		}
		reg.add(l.ID, EventClaim, l.Created)
	}
	// Another live history: one not of l's line, or an ancestor still
	// running after l claimed (its agent was fenced, or it took over).
	mine := reg.claimOf(l)
	for _, id := range reg.IDs() {
		if id == l.ID || reg.Retired(id) {
			continue
		}
		if _, anc := l.Ancestor(id); !anc {
			g.Fork = fmt.Sprintf("lineage %s also claims flow %s (since %s)", recovery.ShortID(id), uid, reg.Claimed(id).UTC().Format(time.RFC3339))
			break
		}
		if f := reg.Fenced(id); !f.IsZero() && f.After(mine) {
			g.Fork = fmt.Sprintf("lineage %s, which this one forked from, was still backing up flow %s at %s", recovery.ShortID(id), uid, f.UTC().Format(time.RFC3339))
			break
		}
		if c := reg.Claimed(id); c.After(mine) {
			g.Fork = fmt.Sprintf("lineage %s, which this one forked from, took the flow's backups over at %s", recovery.ShortID(id), c.UTC().Format(time.RFC3339))
			break
		}
	}
	return g, nil
}

// forkFromLatest says whether the latest backup of a partition, prev,
// shows another history alive beside l: one not of l's line, or an
// ancestor that progressed after l forked from it.
func forkFromLatest(l recovery.Lineage, prev *Manifest) string {
	if prev == nil {
		return ""
	}
	pl := prev.LineageOf()
	if pl.ID == l.ID {
		return ""
	}
	if a, ok := l.Ancestor(pl.ID); ok {
		if prev.Epochs.HiTime.After(a.Seen) && !a.Seen.IsZero() {
			return fmt.Sprintf("partition %d's latest backup %s is of lineage %s, which this one forked from, and reaches %s, after the fork",
				prev.Partition.Index, prev.ID, recovery.ShortID(pl.ID), prev.Epochs.HiTime.UTC().Format(time.RFC3339))
		}
		return ""
	}
	if _, desc := pl.Ancestor(l.ID); desc {
		return "" // a newer history: the registry fences this one
	}
	return fmt.Sprintf("partition %d's latest backup %s is of lineage %s, another history of this flow", prev.Partition.Index, prev.ID, recovery.ShortID(pl.ID))
}

// LineageSummary describes one lineage of a flow as its backups and the
// registry show it.
type LineageSummary struct {
	Lineage recovery.Lineage `json:"lineage"`
	// Claimed is when it last claimed the flow (registry), else when it
	// was created; the newest claim is the current history.
	Claimed time.Time `json:"claimed"`
	Fenced  time.Time `json:"fenced,omitzero"`
	Retired bool      `json:"retired,omitempty"`
	Hosts   []string  `json:"hosts,omitempty"`
	Backups int       `json:"backups"`
	First   time.Time `json:"first_backup,omitzero"`
	Last    time.Time `json:"last_backup,omitzero"`
	// Progress is the latest epoch close its backups reach.
	Progress time.Time `json:"progress,omitzero"`
	// Runs are the recent runs its newest backup names: the history a
	// restore of this lineage lays down.
	Runs []recovery.Run `json:"runs,omitempty"`
}

// History is the history a restore of the lineage lays down.
func (s LineageSummary) History() recovery.History {
	return recovery.History{Lineage: s.Lineage, Runs: s.Runs}
}

// Describe names the lineage, its hosts and its backups' span.
func (s LineageSummary) Describe() string {
	hosts := strings.Join(s.Hosts, ", ")
	if hosts == "" {
		hosts = s.Lineage.Host
	}
	if hosts == "" {
		hosts = "unknown host"
	}
	d := fmt.Sprintf("lineage %s (host %s", s.Lineage.Short(), hosts)
	if p := s.Lineage.Parent(); p != "" {
		d += fmt.Sprintf(", forked from %s at epoch %d", recovery.ShortID(p), s.Lineage.Fork)
	}
	if s.Backups > 0 {
		d += fmt.Sprintf(", backups from %s to %s", s.First.UTC().Format(time.RFC3339), s.Last.UTC().Format(time.RFC3339))
	}
	return d + ")"
}

// Lineages summarises the lineages of one flow's manifests, the current
// one (newest claim) first; retired ones last.
func Lineages(ms []*Manifest, reg *Registry) []LineageSummary {
	by := map[string]*LineageSummary{}
	newest := map[string]string{} // lineage -> id of its newest manifest with a record
	var order []string
	for _, m := range ms {
		l := m.LineageOf()
		s := by[l.ID]
		if s == nil {
			s = &LineageSummary{Lineage: l}
			by[l.ID] = s
			order = append(order, l.ID)
		}
		if m.ID > newest[l.ID] {
			if m.Lineage != nil {
				s.Lineage = l // the newest record (a legacy root learns its host)
			}
			s.Runs, newest[l.ID] = m.Runs, m.ID
		}
		s.Backups++
		if s.First.IsZero() || m.Created.Before(s.First) {
			s.First = m.Created
		}
		if m.Created.After(s.Last) {
			s.Last = m.Created
		}
		if m.Epochs.HiTime.After(s.Progress) {
			s.Progress = m.Epochs.HiTime
		}
		if h := m.Agent.Host; h != "" && !contains(s.Hosts, h) {
			s.Hosts = append(s.Hosts, h)
		}
	}
	out := make([]LineageSummary, 0, len(order))
	for _, id := range order {
		s := by[id]
		s.Claimed = reg.claimOf(s.Lineage)
		if s.Claimed.IsZero() {
			s.Claimed = s.First
		}
		s.Fenced, s.Retired = reg.Fenced(id), reg.Retired(id)
		sort.Strings(s.Hosts)
		out = append(out, *s)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Retired != b.Retired {
			return !a.Retired
		}
		if !a.Claimed.Equal(b.Claimed) {
			return a.Claimed.After(b.Claimed)
		}
		return a.Lineage.ID > b.Lineage.ID
	})
	return out
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// Fork is two histories of one flow both alive after they parted.
type Fork struct {
	A, B LineageSummary
	Why  string
}

// Forks finds a flow's live forks: two lineages, neither retired, that
// both went on after they parted. Unrelated lineages (siblings) both have
// backups; an ancestor went on if a backup of it reaches past what its
// descendant knew of it at the fork, or its agent was fenced.
func Forks(sums []LineageSummary) []Fork {
	var out []Fork
	for i, a := range sums {
		for _, b := range sums[i+1:] {
			if a.Retired || b.Retired {
				continue
			}
			if why := forkBetween(a, b); why != "" {
				out = append(out, Fork{A: a, B: b, Why: why})
			} else if why := forkBetween(b, a); why != "" {
				out = append(out, Fork{A: b, B: a, Why: why})
			}
		}
	}
	return out
}

// forkBetween says why a (the elder, if related) and b are both alive.
func forkBetween(a, b LineageSummary) string {
	anc, ok := b.Lineage.Ancestor(a.Lineage.ID)
	if !ok {
		if _, rev := a.Lineage.Ancestor(b.Lineage.ID); rev {
			return "" // the other order
		}
		return "both have backups after they parted"
	}
	switch {
	case !a.Fenced.IsZero() && a.Fenced.After(b.Lineage.Created):
		return fmt.Sprintf("lineage %s still tried to back up at %s (refused: fenced)", a.Lineage.Short(), a.Fenced.UTC().Format(time.RFC3339))
	case !anc.Seen.IsZero() && a.Progress.After(anc.Seen):
		return fmt.Sprintf("%s went on after %s forked from it (its backups reach %s)", a.Lineage.Short(), b.Lineage.Short(), a.Progress.UTC().Format(time.RFC3339))
	}
	return ""
}
