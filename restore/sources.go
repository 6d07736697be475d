package restore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

// A restore can read several locations holding copies of one flow's
// backups (made by flowbackup copy, which copies objects as stored), so it
// works while one of them is down or missing objects:
//
//   - Each location's catalog and lineage registry are read under that
//     location's own rules (its scheme, signatures, strays). A location
//     that cannot be read (unreachable, missing, access denied) is noted
//     and skipped while another one serves; a rule the reader breaks (a
//     signed location without trusted keys, an encrypted one without an
//     identity) is an error, as with one location.
//   - A backup stored in several locations (the same flow, partition, id
//     and content) counts once; a different manifest under the same id
//     elsewhere is noted and passed over (the first location given wins).
//   - The plan is made over every location's believed backups, and each
//     chunk is read from a location that holds it: first those holding the
//     backup's manifest, in the order given, then the others. A chunk that
//     is missing, damaged or unreadable in one location is read from the
//     next (every chunk is checked against the manifest's hash, so any
//     location's copy will do) before the restore falls back to an older
//     backup. A location that fails outright (not a missing or damaged
//     object) is not asked again. What was read where is noted.

// location is one place a restore reads from.
type location struct {
	store backup.Store
	cat   *backup.Catalog
	read  atomic.Int64 // stored bytes of chunks read from it
}

// sources are the backups a restore reads: the believed manifests of every
// location it could read, each backup once, and where each is stored.
type sources struct {
	locs      []*location
	manifests []*backup.Manifest
	broken    []backup.BrokenManifest
	// holders are, by manifest, the locations holding it (indexes into
	// locs), the one whose copy the plan uses first.
	holders map[*backup.Manifest][]int
	notes   []string

	mu   sync.Mutex
	down map[int]error
	fell map[fallKey]*fellBack
}

type fallKey struct {
	from, to int
	kind     string
}

type fellBack struct {
	n       int
	bytes   int64
	example string
	chunks  map[string]bool // counted
}

// fatalForLocation says whether err reading one location ends the
// restore even when another location could serve: the reader's own
// settings are wrong (a key missing, the schemes mixed), or it was
// stopped.
func fatalForLocation(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, backup.ErrTrustRequired) || errors.Is(err, backup.ErrKeysRequired) ||
		errors.Is(err, backup.ErrIdentityRequired) || errors.Is(err, backup.ErrWrongIdentity) ||
		errors.Is(err, backup.ErrEncryptionMismatch) || errors.Is(err, backup.ErrSigningMismatch)
}

// loadSources reads the catalog of every store under policy p and, unless
// o has one, the lineage registry of the flow o plans, into o.Registry.
// With one store its errors are returned as they are.
func loadSources(ctx context.Context, stores []backup.Store, p backup.ReadPolicy, o *PlanOptions) (*sources, error) {
	if len(stores) == 0 {
		return nil, fmt.Errorf("no backup location given")
	}
	src := &sources{holders: map[*backup.Manifest][]int{}, down: map[int]error{}, fell: map[fallKey]*fellBack{}}
	var firstErr error
	for _, s := range stores {
		cat, err := backup.LoadTrustedCatalog(ctx, s, p)
		if err != nil {
			if len(stores) == 1 || fatalForLocation(ctx, err) {
				return nil, err
			}
			if firstErr == nil {
				firstErr = err
			}
			src.notes = append(src.notes, fmt.Sprintf("location %s cannot be read (%v): skipped", s, err))
			continue
		}
		src.locs = append(src.locs, &location{store: s, cat: cat})
	}
	if len(src.locs) == 0 {
		return nil, fmt.Errorf("none of the %d locations can be read; the first: %w", len(stores), firstErr)
	}
	src.merge()
	if o.Registry != nil {
		return src, nil
	}
	ms, err := PickFlow(src.manifests, o.FlowUID)
	if err != nil {
		var strays []backup.Stray
		for _, l := range src.locs {
			strays = append(strays, l.cat.Strays...)
		}
		if len(src.manifests) == 0 && len(strays) > 0 {
			st := strays[0]
			return nil, fmt.Errorf("%w: no backup here is believed: %d are strays, e.g. %s: %s", ErrNotRestorable, len(strays), st.Key, st.Reason)
		}
		return nil, err
	}
	uid := ms[0].Flow.UID
	for _, l := range src.locs {
		reg, err := backup.LoadRegistryWith(ctx, l.store, uid, l.cat.Policy(o.Trusted))
		if err != nil {
			if len(src.locs) == 1 || fatalForLocation(ctx, err) {
				return nil, err
			}
			src.notes = append(src.notes, fmt.Sprintf("the lineage registry in %s cannot be read (%v): planned with the other locations' registries", l.store, err))
			continue
		}
		if o.Registry == nil {
			o.Registry = reg
		} else {
			o.Registry.Merge(reg)
		}
	}
	return src, nil
}

// merge combines the locations' believed manifests, each backup once, and
// keeps the unreadable ones no other location serves.
func (src *sources) merge() {
	type key struct {
		uid, id string
		part    int
	}
	byKey := map[key]*backup.Manifest{}
	for i, l := range src.locs {
		for _, m := range l.cat.Manifests {
			k := key{m.Flow.UID, m.ID, m.Partition.Index}
			first := byKey[k]
			switch {
			case first == nil:
				byKey[k] = m
				src.manifests = append(src.manifests, m)
				src.holders[m] = []int{i}
			case backup.SameBackup(first, m):
				src.holders[first] = append(src.holders[first], i)
			default:
				src.notes = append(src.notes, fmt.Sprintf("backup %s of partition %d in %s is not the backup of that id in %s (another manifest under the same id): only %s's is used",
					m.ID, m.Partition.Index, l.store, src.locs[src.holders[first][0]].store, src.locs[src.holders[first][0]].store))
			}
		}
	}
	seen := map[string]bool{}
	for _, l := range src.locs {
		for _, b := range l.cat.Broken {
			if m := byKey[key{b.Ref.FlowUID, b.Ref.ID, b.Ref.Index}]; m != nil && b.Ref.ID != "" {
				src.notes = append(src.notes, fmt.Sprintf("backup %s of partition %d: its manifest in %s is unusable (%v); the copy in %s is used",
					b.Ref.ID, b.Ref.Index, l.store, b.Err, src.locs[src.holders[m][0]].store))
				continue
			}
			if seen[b.Key] {
				continue
			}
			seen[b.Key] = true
			src.broken = append(src.broken, b)
		}
	}
	sort.SliceStable(src.manifests, func(i, j int) bool {
		a, b := src.manifests[i], src.manifests[j]
		if a.Flow.UID != b.Flow.UID {
			return a.Flow.UID < b.Flow.UID
		}
		if a.Partition.Index != b.Partition.Index {
			return a.Partition.Index < b.Partition.Index
		}
		return a.ID < b.ID
	})
}

// order is where to read m's chunks from, in turn: the locations holding
// m, then the others.
func (src *sources) order(m *backup.Manifest) []int {
	out := append([]int{}, src.holders[m]...)
	for i := range src.locs {
		held := false
		for _, h := range out {
			held = held || h == i
		}
		if !held {
			out = append(out, i)
		}
	}
	return out
}

// store is a store holding m (the first one).
func (src *sources) store(m *backup.Manifest) backup.Store {
	if h := src.holders[m]; len(h) > 0 {
		return src.locs[h[0]].store
	}
	return src.locs[0].store
}

// getter fetches and checks one chunk of m from the first location in
// src.order(m) that serves it whole. When none does, the error is a
// missing or damaged chunk's if any location said so (the backup is
// unusable: the restore falls back to an older one), else the first
// location's.
func (src *sources) getter(m *backup.Manifest) func(ctx context.Context, p *piece) ([]byte, error) {
	order := src.order(m)
	c := m.Cipher()
	return func(ctx context.Context, p *piece) ([]byte, error) {
		ob := p.chunk.ob
		var errs []error
		var failed []int
		for _, li := range order {
			if src.isDown(li) {
				continue
			}
			b, err := fetchFrame(ctx, src.locs[li].store, p, frameCheck{cipher: c})
			if err == nil {
				src.locs[li].read.Add(p.storedShare())
				for j, f := range failed {
					src.fellBack(f, li, ob, errs[j])
				}
				return b, nil
			}
			if ctx.Err() != nil || len(src.locs) == 1 {
				return nil, err
			}
			if !errors.Is(err, backup.ErrNotFound) && !errors.Is(err, backup.ErrCorrupt) {
				src.markDown(li, err)
			}
			errs, failed = append(errs, err), append(failed, li)
		}
		for _, err := range errs {
			if errors.Is(err, backup.ErrNotFound) || errors.Is(err, backup.ErrCorrupt) {
				return nil, err
			}
		}
		if len(errs) > 0 {
			return nil, errs[0]
		}
		return nil, fmt.Errorf("chunk %s: no location can be read", ob.SHA256[:12])
	}
}

func (src *sources) isDown(i int) bool {
	src.mu.Lock()
	defer src.mu.Unlock()
	return src.down[i] != nil
}

// markDown stops reading location i for the rest of the restore.
func (src *sources) markDown(i int, err error) {
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.down[i] == nil {
		src.down[i] = err
		src.notes = append(src.notes, fmt.Sprintf("location %s failed during the restore (%v): the rest is read from the other locations", src.locs[i].store, err))
	}
}

// fellBack counts a chunk that location from could not serve (err) and
// location to did.
func (src *sources) fellBack(from, to int, ob backup.Object, err error) {
	kind := "could not serve"
	switch {
	case errors.Is(err, backup.ErrNotFound):
		kind = "is missing"
	case errors.Is(err, backup.ErrCorrupt):
		kind = "holds damaged"
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	k := fallKey{from, to, kind}
	f := src.fell[k]
	if f == nil {
		f = &fellBack{example: err.Error(), chunks: map[string]bool{}}
		src.fell[k] = f
	}
	// Each frame of a chunk falls back on its own: the chunk counts once.
	if !f.chunks[ob.SHA256] {
		f.chunks[ob.SHA256] = true
		f.n++
		f.bytes += ob.Stored
	}
}

// takeNotes returns what the sources noted since the last call: locations
// skipped, and chunks read from another location than the first.
func (src *sources) takeNotes() []string {
	src.mu.Lock()
	defer src.mu.Unlock()
	out := src.notes
	src.notes = nil
	keys := make([]fallKey, 0, len(src.fell))
	for k := range src.fell {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.from != b.from {
			return a.from < b.from
		}
		if a.to != b.to {
			return a.to < b.to
		}
		return a.kind < b.kind
	})
	for _, k := range keys {
		f := src.fell[k]
		out = append(out, fmt.Sprintf("read %s (%s) from %s that %s %s (e.g. %s)", human.Count(f.n, "chunk"), human.Bytes(f.bytes),
			src.locs[k.to].store, src.locs[k.from].store, k.kind, strings.TrimSpace(f.example)))
	}
	src.fell = map[fallKey]*fellBack{}
	return out
}

// readFrom is the stored bytes read from each location, by its name.
func (src *sources) readFrom() map[string]int64 {
	out := map[string]int64{}
	for _, l := range src.locs {
		out[l.store.String()] += l.read.Load()
	}
	return out
}

// PlanFromAll reads the catalogs and lineage registries of every location
// (see the top of this file) and plans a restore over them. A location
// that cannot be read is skipped while another one serves; notes receives
// what was skipped (nil: dropped).
func PlanFromAll(ctx context.Context, stores []backup.Store, o PlanOptions, notes func(string)) (*Plan, error) {
	src, err := loadSources(ctx, stores, backup.ReadPolicy{Trusted: o.Trusted, RequireTrust: true}, &o)
	if err != nil {
		return nil, err
	}
	if notes != nil {
		for _, n := range src.takeNotes() {
			notes(n)
		}
	}
	return MakePlan(src.manifests, o)
}
