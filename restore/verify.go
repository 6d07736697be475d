package restore

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/recovery"
)

// VerifyOptions configure an audit.
type VerifyOptions struct {
	// Deep downloads every object the backups name, once, checks its
	// sha256, rebuilds each base once in a temporary directory (PRAGMA
	// integrity_check) and lays each delta over a copy of its base (see
	// deep.go).
	Deep bool
	// Sample (with Deep), between 0 and 100 exclusive: read only this
	// percentage of the unique objects, chosen at random, and check each
	// one's sha256 (no image is rebuilt): a routine audit that reads a
	// different part of the store each time.
	Sample float64
	// Newest (with Deep) checks only the backups the newest restore of
	// each flow would use.
	Newest bool
	// Quarantine (with Deep) marks chunks found damaged in the store
	// (quarantine/<h>.json) so the next backup uploads them again or takes
	// a new base. Without it verify writes nothing: a read-only identity
	// can run every audit.
	Quarantine bool
	// Memory bounds the chunk data in memory (backup.DefaultMemory);
	// Parallel is how many partitions are checked at once (at most; a
	// deep check also bounds the bytes of images it rebuilds at once).
	Memory   int64
	Parallel int
	// Progress, if set, receives stored bytes read and to read.
	Progress func(done, total int64)
	// MaxAge: a restorable epoch older than this is a problem (RPO).
	MaxAge time.Duration
	// FlowUID restricts the audit to one flow.
	FlowUID string
	TempDir string
	Workers int
	Now     func() time.Time
	// Keys open encrypted backups (backup.NewOpener): deep verify needs
	// them; quick verify reads only what encrypted manifests leave in the
	// clear.
	Keys *backup.Cipher
	// Trusted are the public keys whose signatures verify believes; a
	// deep verify of a signed location needs them, a quick one without
	// them says the signatures went unchecked.
	Trusted *backup.TrustedKeys
	// Auth checks encrypted backups' plaintext indexes (the recipients'
	// keys, see backup.IndexAuth); Keys' identities do too. Without
	// either, a quick verify of an encrypted location says it could not
	// tell genuine backups from forged ones (Report.Unauthenticated).
	Auth *backup.IndexAuth
}

// indexAuth is what checks indexes: a quick verify decides from them, with
// the recipients' keys and the identities'; a deep one opens every backup
// it checks, and reports those its identities cannot open.
func (o VerifyOptions) indexAuth() *backup.IndexAuth {
	if o.Deep {
		return o.Auth
	}
	return o.Auth.With(o.Keys.Auth())
}

// Status values of a Report.
const (
	StatusHealthy       = "healthy"
	StatusDegraded      = "restorable-with-problems"
	StatusNotRestorable = "not-restorable"
)

// Problem is one finding.
type Problem struct {
	Flow      string `json:"flow,omitempty"`
	Partition *int   `json:"partition,omitempty"`
	Backup    string `json:"backup,omitempty"`
	Message   string `json:"message"`
}

// FlowReport is the audit of one flow.
type FlowReport struct {
	UID        string    `json:"uid"`
	Name       string    `json:"name"`
	Partitions int       `json:"partitions"`
	Backups    int       `json:"backups"`
	Healthy    int       `json:"healthy_backups"`
	Restorable bool      `json:"restorable"`
	Epoch      uint64    `json:"restorable_epoch,omitempty"`
	EpochTime  time.Time `json:"restorable_epoch_time,omitempty"`
	AgeSeconds float64   `json:"age_seconds,omitempty"`
	// RPOSeconds is how long ago the backups were last known to hold
	// everything the flow had (see RPO): what verify --max-age checks.
	RPOSeconds float64  `json:"rpo_seconds"`
	Chosen     []string `json:"chosen_backups,omitempty"`
	Reason     string   `json:"not_restorable_reason,omitempty"`
	// Lineage is the history a restore would lay down; Lineages every
	// history the backups hold, current first; Forks the pairs of them
	// that are both alive (two machines running the flow).
	Lineage  string                  `json:"lineage,omitempty"`
	Lineages []backup.LineageSummary `json:"lineages"`
	Forks    []string                `json:"forks,omitempty"`
	// The restorable window (see RestorableWindow): from the oldest state
	// any live history's usable backups restore to the newest restore.
	RestorableFrom      time.Time `json:"restorable_from,omitzero"`
	RestorableFromEpoch uint64    `json:"restorable_from_epoch,omitempty"`
	RestorableTo        time.Time `json:"restorable_to,omitzero"`
	RestorableToEpoch   uint64    `json:"restorable_to_epoch,omitempty"`
}

// Report is what verify found.
type Report struct {
	From     string       `json:"from"`
	Mode     string       `json:"mode"`
	Status   string       `json:"status"`
	Flows    []FlowReport `json:"flows"`
	Problems []Problem    `json:"problems"`
	// Notes are conditions the next backup heals by itself (a backup
	// stopped between its manifest and its latest pointer); they do not
	// make a flow degraded.
	Notes   []Problem `json:"notes"`
	Checked int       `json:"backups_checked"`
	Objects int       `json:"objects_checked"`
	// Deep checks: objects and stored bytes read from the store, and the
	// stored bytes of the unique objects the checked backups name.
	ObjectsRead int   `json:"objects_read,omitempty"`
	BytesRead   int64 `json:"bytes_read,omitempty"`
	BytesStored int64 `json:"bytes_stored,omitempty"`
	Sampled     int   `json:"objects_sampled,omitempty"`
	// Encrypted says the backups checked are encrypted (age); Locked
	// counts those the given identities (none, for a quick check) did not
	// open: a quick check reads only their plaintext index.
	Encrypted bool `json:"encrypted"`
	Locked    int  `json:"locked_backups,omitempty"`
	// Signed says the location holds signed backups; SignaturesChecked
	// that verify was given trusted keys and checked them.
	Signed            bool `json:"signed"`
	SignaturesChecked bool `json:"signatures_checked"`
	// Unauthenticated says the location is encrypted and verify had no key
	// to tell genuine backups' plaintext indexes from forged ones.
	Unauthenticated bool `json:"unauthenticated,omitempty"`
}

// Verify audits the backups in s and says whether, and to which epoch and
// wall time, each flow can be restored. It streams the chunk listing (memory
// follows the chunks the manifests name, not the bucket's size), checks the
// latest pointers, and reports manifests that disagree with their flow's
// partition count.
func Verify(ctx context.Context, s backup.Store, o VerifyOptions) (*Report, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	rep := &Report{From: s.String(), Mode: "quick", Problems: []Problem{}, Notes: []Problem{}}
	if o.Deep {
		rep.Mode = "deep"
		switch {
		case o.Sample > 0 && o.Sample < 100:
			rep.Mode = fmt.Sprintf("deep-sample-%g%%", o.Sample)
		case o.Newest:
			rep.Mode = "deep-newest"
		}
	}
	cat, err := backup.LoadTrustedCatalog(ctx, s, backup.ReadPolicy{Workers: o.Workers, Keys: o.Keys, Trusted: o.Trusted, RequireTrust: o.Deep, Auth: o.indexAuth()})
	if err != nil {
		return nil, err
	}
	rep.Signed, rep.SignaturesChecked = cat.Location.Signed, cat.Location.Trusted
	rep.Unauthenticated = cat.Location.Unauthenticated
	if cat.Location.ConfigIgnored {
		rep.Notes = append(rep.Notes, Problem{Message: "config.json is damaged, or not authenticated by the keys given (an older flowkeep wrote it, or someone who can write to the bucket forged it): not believed; the manifests decided the location's scheme. The next backup writes an authenticated one"})
	}
	if rep.Unauthenticated {
		rep.Notes = append(rep.Notes, Problem{Message: "the backups here are encrypted, and their plaintext indexes were not authenticated: what this report says of them could be forged by anyone who can write to the bucket. Give --recipients-file (the agent's) or --identity-file"})
	}
	for _, st := range cat.Strays {
		if o.FlowUID != "" && st.Manifest.Flow.UID != o.FlowUID {
			continue
		}
		i := st.Manifest.Partition.Index
		rep.Problems = append(rep.Problems, Problem{Flow: st.Manifest.Flow.UID, Partition: &i, Backup: st.Manifest.ID, Message: st.Reason})
	}
	if cat.Location.Signed && o.Trusted == nil {
		rep.Notes = append(rep.Notes, Problem{Message: "the backups here are signed, and their signatures were not checked: give --trusted-keys (restore, deep verify and prune need them)"})
	}
	for _, b := range cat.Broken {
		if o.FlowUID != "" && b.Ref.FlowUID != o.FlowUID {
			continue
		}
		pr := Problem{Backup: b.Key, Message: "unreadable manifest: " + b.Err.Error()}
		if b.Ref.FlowUID != "" {
			pr.Flow = b.Ref.FlowUID
			i := b.Ref.Index
			pr.Partition = &i
		}
		rep.Problems = append(rep.Problems, pr)
	}
	quarantined, err := backup.LoadQuarantine(ctx, s)
	if err != nil {
		return nil, err
	}
	bad := map[string]bool{}
	problem := func(m *backup.Manifest, msg string) {
		if bad[m.ID] {
			return // one finding per backup
		}
		i := m.Partition.Index
		rep.Problems = append(rep.Problems, Problem{Flow: m.Flow.UID, Partition: &i, Backup: m.ID, Message: msg})
		bad[m.ID] = true
	}
	var ms []*backup.Manifest
	for _, m := range cat.Manifests {
		if o.FlowUID == "" || m.Flow.UID == o.FlowUID {
			ms = append(ms, m)
		}
	}
	rep.Checked = len(ms)
	for _, m := range ms {
		if backup.FutureDated(m, o.Now()) {
			i := m.Partition.Index
			rep.Problems = append(rep.Problems, Problem{Flow: m.Flow.UID, Partition: &i, Backup: m.ID,
				Message: fmt.Sprintf("dated more than %v in the future (a writer's clock is wrong, or someone wrote it to push genuine backups out of prune's --keep-last): prune ignores it", backup.FutureSkew)})
		}
		rep.Encrypted = rep.Encrypted || m.Encryption != nil
		if m.Locked {
			rep.Locked++
		}
	}
	// A quarantine marker is a hint anyone who can write to the bucket can
	// leave: reported, but the backup stays in the plan (restore reads and
	// checks the chunk itself, and falls back if it is damaged).
	flagged := map[string]bool{}
	flag := func(m *backup.Manifest, msg string) {
		if flagged[m.ID] {
			return
		}
		flagged[m.ID] = true
		i := m.Partition.Index
		rep.Problems = append(rep.Problems, Problem{Flow: m.Flow.UID, Partition: &i, Backup: m.ID, Message: msg})
	}
	if err := checkChunksListed(ctx, s, ms, quarantined, problem, flag, rep); err != nil {
		return nil, err
	}
	if o.Deep {
		if err := deepCheck(ctx, s, ms, bad, problem, o, rep); err != nil {
			return nil, err
		}
	}
	if err := checkLatest(ctx, s, ms, cat.Broken, o.FlowUID, o.Keys, rep); err != nil {
		return nil, err
	}
	flows := flowsOf(ms)
	if o.FlowUID == "" && len(flows) > 1 {
		rep.Problems = append(rep.Problems, Problem{Message: fmt.Sprintf("backups of %d flows share this location: %s; give each flow its own prefix, and restore with --flow", len(flows), describeFlows(flows))})
	}
	if len(ms) == 0 {
		rep.Problems = append(rep.Problems, Problem{Message: "there are no backups here"})
	}
	uids := make([]string, 0, len(flows))
	for uid := range flows {
		uids = append(uids, uid)
	}
	sort.Strings(uids)
	now := o.Now()
	for _, uid := range uids {
		fr := FlowReport{UID: uid, Name: flows[uid].Name}
		var mine []*backup.Manifest
		for _, m := range ms {
			if m.Flow.UID == uid {
				mine = append(mine, m)
			}
		}
		fr.Partitions = flowCount(mine, bad)
		for _, b := range cat.Broken {
			if b.Ref.FlowUID == uid {
				fr.Backups++ // counted, and not healthy
			}
		}
		for _, m := range mine {
			fr.Backups++
			if m.Partition.Count != fr.Partitions {
				problem(m, fmt.Sprintf("claims %d partitions, but the flow's other backups have %d: a stray, not used by restore", m.Partition.Count, fr.Partitions))
			}
			if !bad[m.ID] {
				fr.Healthy++
			}
		}
		reg, err := backup.LoadRegistryWith(ctx, s, uid, cat.Policy(o.Trusted))
		if err != nil {
			return nil, err
		}
		fr.Lineages = backup.Lineages(mine, reg)
		plan, err := MakePlan(ms, PlanOptions{FlowUID: uid, Exclude: bad, Registry: reg})
		restored := ""
		if err == nil {
			restored = plan.Lineage.Lineage.ID
			fr.Lineage = restored
		}
		for _, f := range backup.Forks(fr.Lineages) {
			msg := ForkMessage(fr.Name, f, restored)
			fr.Forks = append(fr.Forks, msg)
			rep.Problems = append(rep.Problems, Problem{Flow: uid, Message: msg})
		}
		known := map[string]bool{}
		for _, sum := range fr.Lineages {
			known[sum.Lineage.ID] = true
		}
		for _, id := range reg.IDs() {
			if c := reg.Claimed(id); !known[id] && !c.IsZero() && !reg.Retired(id) {
				rep.Problems = append(rep.Problems, Problem{Flow: uid, Message: fmt.Sprintf(
					"lineage %s claims the flow's backups (since %s) but has no backup here: a restore whose first backup has not landed yet, or a forged claim (it fences the agents of older lineages; remove %s%s/%s/ if it is not yours)",
					recovery.ShortID(id), c.UTC().Format(time.RFC3339), backup.LineagesPrefix, uid, id)})
			}
		}
		if err != nil {
			fr.Reason = err.Error()
			rep.Problems = append(rep.Problems, Problem{Flow: uid, Message: err.Error()})
		} else {
			fr.Restorable = true
			fr.Epoch, fr.EpochTime = plan.Epoch, plan.EpochTime
			if !plan.EpochTime.IsZero() {
				fr.AgeSeconds = now.Sub(plan.EpochTime).Seconds()
			}
			for _, m := range plan.Chosen {
				fr.Chosen = append(fr.Chosen, m.ID)
			}
			if w, err := RestorableWindow(ms, PlanOptions{FlowUID: uid, Exclude: bad, Registry: reg}); err == nil {
				fr.RestorableFrom, fr.RestorableFromEpoch = w.From.Time, w.From.Epoch
				fr.RestorableTo, fr.RestorableToEpoch = w.To.Time, w.To.Epoch
			}
			var hbAuth *backup.IndexAuth
			if cat.Location.Encrypted {
				hbAuth = o.indexAuth()
			}
			hbs, err := backup.LoadHeartbeats(ctx, s, uid, o.Trusted, hbAuth)
			if err != nil {
				return nil, err
			}
			rpo := RPO(plan, hbs, now)
			fr.RPOSeconds = rpo.Seconds()
			if o.MaxAge > 0 && rpo > o.MaxAge {
				rep.Problems = append(rep.Problems, Problem{Flow: uid, Message: fmt.Sprintf("RPO %v, more than --max-age %v: the backups were last known to hold everything the flow had %v ago (restorable epoch %d); backups are falling behind",
					rpo.Round(time.Second), o.MaxAge, rpo.Round(time.Second), plan.Epoch)})
			}
		}
		rep.Flows = append(rep.Flows, fr)
	}
	rep.Status = StatusHealthy
	if len(rep.Problems) > 0 {
		rep.Status = StatusDegraded
	}
	// Not restorable when no flow audited can be restored: a stray
	// manifest of another flow beside a restorable one is a problem, not a
	// lost flow.
	restorable := false
	for _, f := range rep.Flows {
		restorable = restorable || f.Restorable
	}
	if !restorable {
		rep.Status = StatusNotRestorable
	}
	return rep, nil
}

// checkChunksListed streams the chunk listing and checks every chunk the
// manifests name is there with its stored size (problem), and flags those
// that are quarantined.
func checkChunksListed(ctx context.Context, s backup.Store, ms []*backup.Manifest, quarantined map[string]bool, problem, flag func(*backup.Manifest, string), rep *Report) error {
	type need struct {
		stored int64
		users  []*backup.Manifest
	}
	needs := map[string]*need{}
	for _, m := range ms {
		for _, ob := range m.Objects() {
			rep.Objects++
			k := backup.ChunkKey(ob.SHA256)
			n := needs[k]
			if n == nil {
				n = &need{stored: ob.Stored}
				needs[k] = n
			}
			if len(n.users) == 0 || n.users[len(n.users)-1] != m {
				n.users = append(n.users, m)
			}
			if quarantined[ob.SHA256] {
				flag(m, fmt.Sprintf("chunk %s is quarantined: verify --deep found it damaged in the store (or someone who can write to the bucket says so); the next backup uploads it again, or takes a new base, and a restore reads and checks it", ob.SHA256[:12]))
			}
		}
	}
	err := s.List(ctx, backup.ChunksPrefix, "", func(oi backup.ObjectInfo) error {
		n, ok := needs[oi.Key]
		if !ok {
			return nil
		}
		delete(needs, oi.Key)
		if oi.Size != n.stored {
			for _, m := range n.users {
				problem(m, fmt.Sprintf("chunk %s is %d bytes, the manifest says %d (truncated or replaced)", path.Base(oi.Key)[:12], oi.Size, n.stored))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list chunks: %w", err)
	}
	for k, n := range needs {
		for _, m := range n.users {
			problem(m, fmt.Sprintf("chunk %s is missing", path.Base(k)[:12]))
		}
	}
	return nil
}

// checkLatest checks each partition's latest pointer: present, readable,
// and naming that partition's newest backup.
func checkLatest(ctx context.Context, s backup.Store, ms []*backup.Manifest, broken []backup.BrokenManifest, flow string, keys *backup.Cipher, rep *Report) error {
	damaged := map[string]bool{}
	for _, b := range broken {
		damaged[b.Ref.ID] = true
	}
	type part struct {
		uid string
		idx int
	}
	newest := map[part]*backup.Manifest{}
	for _, m := range ms {
		k := part{m.Flow.UID, m.Partition.Index}
		if cur := newest[k]; cur == nil || m.ID > cur.ID {
			newest[k] = m
		}
	}
	add := func(uid string, idx int, msg string) {
		rep.Problems = append(rep.Problems, Problem{Flow: uid, Partition: &idx, Message: msg})
	}
	note := func(uid string, idx int, msg string) {
		rep.Notes = append(rep.Notes, Problem{Flow: uid, Partition: &idx, Message: msg})
	}
	seen := map[part]bool{}
	err := s.List(ctx, backup.LatestPrefix, "", func(oi backup.ObjectInfo) error {
		m, err := backup.ReadManifestWith(ctx, s, oi.Key, keys)
		if errors.Is(err, backup.ErrNotFound) {
			return nil
		}
		if err != nil && !errors.Is(err, backup.ErrCorrupt) {
			return err
		}
		if err != nil {
			if flow == "" || strings.Contains(oi.Key, flow) {
				rep.Problems = append(rep.Problems, Problem{Backup: backup.DisplayKey(oi.Key), Message: "damaged latest pointer: " + err.Error() + "; the next backup of its partition rewrites it (and starts a new base)"})
			}
			return nil
		}
		if flow != "" && m.Flow.UID != flow {
			return nil
		}
		k := part{m.Flow.UID, m.Partition.Index}
		seen[k] = true
		if oi.Key != backup.LatestKey(k.uid, k.idx) {
			add(k.uid, k.idx, fmt.Sprintf("latest pointer %s names partition %d of flow %s", backup.DisplayKey(oi.Key), k.idx, k.uid))
			return nil
		}
		n := newest[k]
		if !damaged[m.ID] && (n == nil || m.ID > n.ID) {
			// A backup that landed while verify read the rest is not a
			// missing manifest.
			if _, err := s.Stat(ctx, backup.ManifestKey(k.uid, k.idx, m.ID)); err == nil {
				return nil
			} else if !errors.Is(err, backup.ErrNotFound) {
				return err
			}
		}
		switch {
		case damaged[m.ID]:
			add(k.uid, k.idx, fmt.Sprintf("the newest backup, %s, has a damaged manifest (see above): restores use older backups; the next backup of this partition takes a new base", m.ID))
		case n == nil:
			add(k.uid, k.idx, fmt.Sprintf("the latest pointer names backup %s, but no manifest of this partition is stored", m.ID))
		case m.ID > n.ID:
			add(k.uid, k.idx, fmt.Sprintf("the latest pointer names backup %s, newer than any manifest of this partition (the newest is %s): its manifest is missing", m.ID, n.ID))
		case n.ID != m.ID:
			note(k.uid, k.idx, fmt.Sprintf("the latest pointer names backup %s, but %s is newer (a backup stopped between its manifest and its pointer); the next backup sets it right", m.ID, n.ID))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check latest pointers: %w", err)
	}
	for k := range newest {
		if !seen[k] {
			note(k.uid, k.idx, fmt.Sprintf("has no latest pointer (%s; a backup stopped between its manifest and its pointer); the next backup writes one, starting from a full image", backup.LatestKey(k.uid, k.idx)))
		}
	}
	return nil
}

// RPO is the bucket's view of the flow's recovery point objective: how
// long ago the backups a restore would use were last known to hold
// everything the flow had. A chosen backup whose newest epoch is the one
// restored held everything its partition had when it was captured, and
// still did when a heartbeat of the agent last found the partition
// unchanged; a chosen backup that restores an epoch below its newest one
// holds nothing after that epoch's time. The flow's RPO counts from the
// oldest of these. So an idle, fully backed-up flow has an RPO of at most
// one of the agent's ticks, and the agent's flowkeep_backup_rpo_seconds
// (exact, from the partitions) agrees within one tick.
func RPO(plan *Plan, hbs map[int]backup.Heartbeat, now time.Time) time.Duration {
	var oldest time.Time
	for p, m := range plan.Chosen {
		t := plan.EpochTime
		if plan.Epoch == m.Epochs.Hi {
			t = m.Created
			if hb, ok := hbs[p]; ok && hb.Backup == m.ID && hb.Checked.After(t) {
				t = hb.Checked
			}
		}
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return max(0, now.Sub(oldest))
}
