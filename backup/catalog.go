package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sync/errgroup"

	"github.com/flowkeep/flowkeep/recovery"
)

// Catalog is every manifest under a store's root.
type Catalog struct {
	// Manifests are the valid manifests, sorted by flow, partition, id.
	Manifests []*Manifest
	// Keys maps a manifest to its object key.
	Keys map[*Manifest]string
	// Broken lists manifest objects that could not be read or are invalid.
	Broken []BrokenManifest
	// Strays are valid manifests the reader does not believe (see
	// LoadTrustedCatalog); Location what the location holds.
	Strays   []Stray
	Location LocationInfo
	// Auth is what the lineage registry's events are checked with in an
	// encrypted location (see Policy): the keys of the reader's
	// recipients and identities (nil in a plaintext location, or when the
	// reader had no key).
	Auth *IndexAuth
}

// Policy is what a reader who loaded c believes of the lineage registry:
// events signed by trusted (a signed location), and tagged under c.Auth
// (an encrypted one).
func (c *Catalog) Policy(trusted *TrustedKeys) RegistryPolicy {
	return RegistryPolicy{Trusted: trusted, Auth: c.Auth}
}

// BrokenManifest is a manifest object that failed to load.
type BrokenManifest struct {
	Key string
	Ref ManifestRef
	Err error
}

// CatalogMemory bounds the manifest bytes a catalog reads and parses at
// once (each counts twice its stored size: the bytes and what they parse
// into).
const CatalogMemory = 64 << 20

// LoadCatalog lists and reads every manifest (one LIST, then GETs in
// parallel, workers at once; DefaultCatalogWorkers if workers <= 0). A
// manifest that cannot be read, does not parse or match its seal (after
// three reads), or disagrees with its key is Broken: the catalog is then an
// incomplete view, on which prune refuses to delete anything. Encrypted
// manifests come back Locked (LoadCatalogWith opens them).
func LoadCatalog(ctx context.Context, s Store, workers int) (*Catalog, error) {
	return LoadCatalogWith(ctx, s, workers, nil)
}

// LoadCatalogWith is LoadCatalog opening encrypted manifests with keys;
// those it cannot open are in the catalog Locked.
func LoadCatalogWith(ctx context.Context, s Store, workers int, keys *Cipher) (*Catalog, error) {
	var refs []ManifestRef
	var sizes []int64
	var strays []BrokenManifest
	err := s.List(ctx, ManifestsPrefix, "", func(o ObjectInfo) error {
		r, ok := ParseManifestKey(o.Key)
		if !ok {
			strays = append(strays, BrokenManifest{Key: DisplayKey(o.Key), Err: fmt.Errorf("%w: not a manifest key", ErrCorrupt)})
			return nil
		}
		refs = append(refs, r)
		sizes = append(sizes, o.Size)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list manifests in %s: %w", s, err)
	}
	if workers <= 0 {
		workers = DefaultCatalogWorkers
	}
	ms := make([]*Manifest, len(refs))
	errs := make([]error, len(refs))
	var g errgroup.Group
	g.SetLimit(workers)
	// Manifests being read and parsed share one memory budget, whatever
	// their number and sizes (a hostile one may be MaxManifestBytes).
	budget := NewBudget(CatalogMemory)
	for i := range refs {
		release, err := budget.Acquire(ctx, max(sizes[i], 1<<10)*2)
		if err != nil {
			break
		}
		g.Go(func() error {
			defer release()
			ms[i], errs[i] = loadManifest(ctx, s, refs[i], keys)
			return nil
		})
	}
	g.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &Catalog{Keys: map[*Manifest]string{}, Broken: strays}
	for i, m := range ms {
		if errs[i] != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			c.Broken = append(c.Broken, BrokenManifest{Key: refs[i].Key, Ref: refs[i], Err: errs[i]})
			continue
		}
		c.Manifests = append(c.Manifests, m)
		c.Keys[m] = refs[i].Key
	}
	sort.Slice(c.Manifests, func(i, j int) bool {
		a, b := c.Manifests[i], c.Manifests[j]
		if a.Flow.UID != b.Flow.UID {
			return a.Flow.UID < b.Flow.UID
		}
		if a.Partition.Index != b.Partition.Index {
			return a.Partition.Index < b.Partition.Index
		}
		return a.ID < b.ID
	})
	return c, nil
}

func loadManifest(ctx context.Context, s Store, r ManifestRef, c *Cipher) (*Manifest, error) {
	m, err := ReadManifestWith(ctx, s, r.Key, c)
	if err != nil {
		return nil, err
	}
	if m.Flow.UID != r.FlowUID || m.Partition.Index != r.Index || m.ID != r.ID {
		return nil, fmt.Errorf("%w: manifest %s says flow %s partition %d id %s", ErrCorrupt, r.Key, m.Flow.UID, m.Partition.Index, m.ID)
	}
	return m, nil
}

// ReadManifest reads and parses the manifest at key. A manifest that does
// not parse or match its seal is read again (twice) before it is called
// corrupt: a byte flipped in transit is not damage in the store. An
// encrypted manifest comes back Locked (ReadManifestWith opens it).
func ReadManifest(ctx context.Context, s Store, key string) (*Manifest, error) {
	return ReadManifestWith(ctx, s, key, nil)
}

// ReadManifestWith is ReadManifest opening an encrypted manifest with c
// (see OpenManifest).
func ReadManifestWith(ctx context.Context, s Store, key string, c *Cipher) (*Manifest, error) {
	m, err := readParsed(ctx, s, key, MaxManifestBytes, func(b []byte) (*Manifest, error) { return OpenManifest(b, c) })
	if errors.Is(err, ErrCorrupt) {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return m, err
}

// Flows groups manifests by flow uid.
func (c *Catalog) Flows() map[string][]*Manifest {
	out := map[string][]*Manifest{}
	for _, m := range c.Manifests {
		out[m.Flow.UID] = append(out[m.Flow.UID], m)
	}
	return out
}

// Overlap is a choice of one backup per partition that all contain Epoch
// and are one history with Lineage up to it.
type Overlap struct {
	Epoch   uint64
	Lineage recovery.Lineage
	// Chosen[i] is partition i's backup: the newest one containing Epoch
	// of Lineage itself, else of a lineage that agrees with it there.
	Chosen []*Manifest
}

// PlanOverlap finds the newest restore of ms (one flow's usable manifests):
// the newest lineage every partition 0..count-1 can reach, at the largest
// epoch. ok is false if there is none.
func PlanOverlap(ms []*Manifest, count int) (Overlap, bool) {
	return PlanLineage(ms, count, nil, "", 0)
}

// OverlapAt is PlanOverlap for exactly epoch e.
func OverlapAt(ms []*Manifest, count int, e uint64) (Overlap, bool) {
	return PlanLineage(ms, count, nil, "", e)
}

// PlanLineage plans a restore of lineage id ("": the newest lineage, by
// reg's claims, that is not retired and every partition can reach) at
// epoch e (0: the largest it reaches). Backups of two lineages are combined
// at an epoch only where the lineages agree (recovery.AgreeUpTo).
func PlanLineage(ms []*Manifest, count int, reg *Registry, id string, e uint64) (Overlap, bool) {
	byPart := make([][]*Manifest, count)
	for _, m := range ms {
		if m.Partition.Count == count && m.Partition.Index < count {
			byPart[m.Partition.Index] = append(byPart[m.Partition.Index], m)
		}
	}
	for _, sum := range Lineages(ms, reg) {
		if id != "" && sum.Lineage.ID != id || id == "" && sum.Retired {
			continue
		}
		if o, ok := overlapOf(byPart, sum.History(), e); ok {
			return o, true
		}
		if id != "" {
			break
		}
	}
	return Overlap{}, false
}

// RestorePoints is the newest restore of every lineage of ms that is not
// retired and can be restored: what prune must keep.
func RestorePoints(ms []*Manifest, count int, reg *Registry) []Overlap {
	byPart := make([][]*Manifest, count)
	for _, m := range ms {
		if m.Partition.Count == count && m.Partition.Index < count {
			byPart[m.Partition.Index] = append(byPart[m.Partition.Index], m)
		}
	}
	var out []Overlap
	for _, sum := range Lineages(ms, reg) {
		if sum.Retired {
			continue
		}
		if o, ok := overlapOf(byPart, sum.History(), 0); ok {
			out = append(out, o)
		}
	}
	return out
}

// overlapOf finds the largest epoch (or exactly e) at which every
// partition has a backup of history h.
func overlapOf(byPart [][]*Manifest, h recovery.History, e uint64) (Overlap, bool) {
	if e > 0 {
		return overlapAt(byPart, h, e)
	}
	// The answer is the highest epoch some backup reaches within h: the
	// candidates are those, tried from the top.
	var cands []uint64
	for _, list := range byPart {
		for _, m := range list {
			up := uint64(recovery.Agree(m.History(), h))
			if c := min(m.Epochs.Hi, up); c >= m.Epochs.Lo {
				cands = append(cands, c)
			}
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i] > cands[j] })
	for i, c := range cands {
		if i > 0 && c == cands[i-1] {
			continue
		}
		if o, ok := overlapAt(byPart, h, c); ok {
			return o, true
		}
	}
	return Overlap{}, false
}

func overlapAt(byPart [][]*Manifest, h recovery.History, e uint64) (Overlap, bool) {
	o := Overlap{Epoch: e, Lineage: h.Lineage, Chosen: make([]*Manifest, len(byPart))}
	for i, list := range byPart {
		for _, m := range list {
			if !m.Epochs.Contains(e) || uint64(recovery.Agree(m.History(), h)) < e {
				continue
			}
			if cur := o.Chosen[i]; cur == nil || better(m, cur, h.Lineage) {
				o.Chosen[i] = m
			}
		}
		if o.Chosen[i] == nil {
			return Overlap{}, false
		}
	}
	return o, true
}

// better prefers a backup of l itself, then the newer one.
func better(m, than *Manifest, l recovery.Lineage) bool {
	mine, theirs := m.LineageOf().ID == l.ID, than.LineageOf().ID == l.ID
	if mine != theirs {
		return mine
	}
	return m.ID > than.ID
}
