package backup

import (
	"context"
	"fmt"
	"sort"
	"time"
)

// PruneOptions say what to keep. A backup is kept if it is among its
// partition's KeepLast newest, or younger than KeepWithin, or part of the
// newest restorable overlap of its flow; everything else is deleted, then
// every chunk no kept backup names, unless it is younger than Grace (a
// backup may be uploading it right now).
type PruneOptions struct {
	KeepLast   int
	KeepWithin time.Duration
	// Grace is how old an unreferenced chunk must be before it is deleted:
	// at least LockTTL, the longest a backup can run without renewing its
	// lock. The CLI's default is DefaultGrace.
	Grace time.Duration
	// LockTTL is the backups' lock TTL (DefaultLockTTL if zero).
	LockTTL time.Duration
	DryRun  bool
	Now     func() time.Time
}

// DefaultGrace is the chunk grace period the CLI uses.
const DefaultGrace = time.Hour

// Validate refuses settings that could delete what a backup needs.
func (o PruneOptions) Validate() error {
	ttl := o.LockTTL
	if ttl <= 0 {
		ttl = DefaultLockTTL
	}
	switch {
	case o.KeepLast < 1:
		return fmt.Errorf("keep-last must be at least 1: the newest backup of each partition is always kept")
	case o.KeepWithin < 0:
		return fmt.Errorf("keep-within must not be negative, got %v", o.KeepWithin)
	case o.Grace < ttl:
		return fmt.Errorf("grace %v is shorter than the lock TTL %v: a chunk a running backup just uploaded could be deleted; use a grace of at least %v", o.Grace, ttl, ttl)
	}
	return nil
}

// PruneResult reports what prune did (or would do, in a dry run).
type PruneResult struct {
	KeptManifests    int
	DeletedManifests []string
	DeletedChunks    int
	DeletedBytes     int64
	Protected        []string // manifests kept only because the newest overlap needs them
}

// Prune deletes old backups and unreferenced chunks.
func Prune(ctx context.Context, s Store, o PruneOptions) (*PruneResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	now := o.Now()
	cat, err := LoadCatalog(ctx, s, 0)
	if err != nil {
		return nil, err
	}
	keep := map[*Manifest]bool{}
	res := &PruneResult{}
	for _, ms := range cat.Flows() {
		byPart := map[int][]*Manifest{}
		count := 0
		for _, m := range ms {
			byPart[m.Partition.Index] = append(byPart[m.Partition.Index], m)
			count = max(count, m.Partition.Count)
		}
		for _, list := range byPart {
			sort.Slice(list, func(i, j int) bool { return list[i].ID > list[j].ID })
			for i, m := range list {
				if i < o.KeepLast || (o.KeepWithin > 0 && now.Sub(m.Created) <= o.KeepWithin) {
					keep[m] = true
				}
			}
		}
		if ov, ok := PlanOverlap(ms, count); ok {
			for _, m := range ov.Chosen {
				if !keep[m] {
					res.Protected = append(res.Protected, cat.Keys[m])
				}
				keep[m] = true
			}
		}
	}
	referenced := map[string]bool{}
	for _, m := range cat.Manifests {
		if !keep[m] {
			continue
		}
		res.KeptManifests++
		for _, ob := range m.Objects() {
			referenced[ob.SHA256] = true
		}
	}
	// Latest pointers name manifests too; their chunks stay.
	err = s.List(ctx, LatestPrefix, "", func(oi ObjectInfo) error {
		b, err := ReadAll(ctx, s, oi.Key, MaxManifestBytes)
		if err != nil {
			return nil
		}
		if m, err := ParseManifest(b); err == nil {
			for _, ob := range m.Objects() {
				referenced[ob.SHA256] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list latest pointers: %w", err)
	}
	for _, m := range cat.Manifests {
		if keep[m] {
			continue
		}
		key := cat.Keys[m]
		res.DeletedManifests = append(res.DeletedManifests, key)
		if !o.DryRun {
			if err := s.Delete(ctx, key); err != nil {
				return res, fmt.Errorf("delete %s: %w", key, err)
			}
		}
	}
	var doomed []ObjectInfo
	err = s.List(ctx, ChunksPrefix, "", func(oi ObjectInfo) error {
		h := oi.Key[len(oi.Key)-min(64, len(oi.Key)):]
		if !referenced[h] && now.Sub(oi.Modified) > o.Grace {
			doomed = append(doomed, oi)
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("list chunks: %w", err)
	}
	for _, oi := range doomed {
		if !o.DryRun {
			if err := s.Delete(ctx, oi.Key); err != nil {
				return res, fmt.Errorf("delete %s: %w", oi.Key, err)
			}
		}
		res.DeletedChunks++
		res.DeletedBytes += oi.Size
	}
	return res, nil
}
