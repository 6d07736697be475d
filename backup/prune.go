package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/flowkeep/flowkeep/internal/machine"
	"github.com/flowkeep/flowkeep/recovery"
	"os"
	"slices"
	"strings"
	"time"
)

// PruneOptions say what to keep. A backup is kept if its partition's
// retention policy keeps it (Keep, with KeepLast and KeepWithin), or
// the newest restorable overlap of a live history of its flow needs it;
// everything else is deleted, then every chunk no kept backup (and no
// latest pointer) names, unless it is younger than Grace.
type PruneOptions struct {
	// Keep is the retention policy (see KeepPolicy); KeepLast and
	// KeepWithin, if set, are its Last and Within (as before it existed).
	Keep       KeepPolicy
	KeepLast   int
	KeepWithin time.Duration
	// Grace is how old an unreferenced chunk must be before it is deleted:
	// at least LockTTL, the longest a backup can run without renewing its
	// lock. The CLI's default is DefaultGrace.
	Grace time.Duration
	// LockTTL is the prune lock's TTL, and the backups' (DefaultLockTTL if
	// zero).
	LockTTL time.Duration
	// Holder names this prune in its lock (default host/pid/random).
	Holder string
	DryRun bool
	Now    func() time.Time
	// RetireLineages are lineages (ids or unique prefixes) an operator
	// retires before the prune: their machines are gone, so they no longer
	// count as live histories (see RetireLineage).
	RetireLineages []string
	// SigningKey signs retirements (in a signed location, only signed ones
	// count); TrustedKeys are the keys whose signatures prune accepts.
	SigningKey  *SigningKey
	TrustedKeys *TrustedKeys
	// In an encrypted location, Auth (the recipients' keys) or Keys (an
	// identity, which opens the manifests) tells genuine backups from
	// forged ones; prune refuses to run there with neither
	// (ErrKeysRequired).
	Auth *IndexAuth
	Keys *Cipher
}

// policy is Keep with KeepLast and KeepWithin.
func (o PruneOptions) policy() KeepPolicy {
	r := o.Keep
	r.Last = max(r.Last, o.KeepLast)
	if o.KeepWithin > 0 {
		r.Within = o.KeepWithin
	}
	return r
}

// DefaultGrace is the chunk grace period the CLI uses.
const DefaultGrace = time.Hour

// Validate refuses settings that could delete what a backup needs.
func (o PruneOptions) Validate() error {
	ttl := o.LockTTL
	if ttl <= 0 {
		ttl = DefaultLockTTL
	}
	r := o.policy()
	if err := r.Validate(); err != nil {
		return err
	}
	switch {
	case o.KeepLast < 0 || o.KeepWithin < 0:
		return fmt.Errorf("keep-last and keep-within must not be negative, got %d and %v", o.KeepLast, o.KeepWithin)
	case r.Empty():
		return fmt.Errorf("give at least one retention rule (--keep-last, --keep-within, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly or --keep-tag); the newest backup of each partition is always kept")
	case ttl < MinLockTTL:
		return fmt.Errorf("lock TTL %v is too short: at least %v", ttl, MinLockTTL)
	case ttl > MaxLockTTL:
		return fmt.Errorf("lock TTL %v is too long: at most %v", ttl, MaxLockTTL)
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
	SweptTemp        int      // leftover temporary files of killed writers removed (file://)
	Retired          []string // lineages retired (full ids)
	// HeldChunks (HeldBytes) are unreferenced chunks younger than the
	// grace: kept this time (a running backup may be about to name them),
	// deleted by a prune after HeldUntil.
	HeldChunks int
	HeldBytes  int64
	HeldUntil  time.Time
	// Reasons says, for each backup the policy kept, which rules kept it
	// ("last 1", "daily 2026-12-05", "tag release"); backups kept only
	// for a restore are in Protected.
	Reasons map[string][]string
	// Ignored are manifests prune neither counted nor deleted, and why:
	// strays (untrusted, or plaintext in an encrypted location) and
	// manifests dated in the future.
	Ignored []string
	// Unreadable are manifest objects that were read whole but are not a
	// manifest prune can believe or parse (damaged, or written by someone
	// with PUT rights): they could name any chunk, so the chunk sweep was
	// skipped (NoChunkSweep) while the backups the policy lets go were still
	// deleted. Moving them out of manifests/ lets the next prune sweep.
	Unreadable   []string
	NoChunkSweep bool
	// LockedManifests are backups the policy would delete but that are
	// under an object lock: kept (with their chunks), as KeptManifests
	// count them. LockedObjects (LockedBytes) count those manifests and
	// the unreferenced chunks kept for their lock; the latest of their
	// locks ends at LockedUntil, after which a prune deletes them.
	LockedManifests []string
	LockedObjects   int
	LockedBytes     int64
	LockedUntil     time.Time
}

// ErrIncompleteView says prune could not read every manifest or latest
// pointer, so it cannot know which chunks are referenced: it deleted
// nothing.
var ErrIncompleteView = errors.New("prune refused: some manifests could not be read")

// Prune deletes old backups and unreferenced chunks, under the prune lock
// (no backup runs meanwhile; the lock is renewed and losing it stops the
// prune). It deletes nothing unless it read every manifest and latest
// pointer: an unreadable one could name any chunk.
func Prune(ctx context.Context, s Store, o PruneOptions) (*PruneResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LockTTL <= 0 {
		o.LockTTL = DefaultLockTTL
	}
	if o.Holder == "" {
		var r [4]byte
		rand.Read(r[:])
		o.Holder = fmt.Sprintf("prune %s/%d/%s", machine.ID(), os.Getpid(), hex.EncodeToString(r[:]))
	}
	res := &PruneResult{Reasons: map[string][]string{}}
	if o.DryRun {
		return res, prune(ctx, s, o, res, nil)
	}
	lock, err := AcquirePruneLock(ctx, s, o.Holder, o.LockTTL, o.Now)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.WithoutCancel(ctx))
	lctx, stop := lock.KeepAlive(ctx)
	defer stop()
	if err := prune(lctx, s, o, res, lock); err != nil {
		return res, lockCause(lctx, err)
	}
	return res, nil
}

func prune(ctx context.Context, s Store, o PruneOptions, res *PruneResult, lock *Lock) error {
	now := o.Now()
	cat, err := LoadTrustedCatalog(ctx, s, ReadPolicy{Trusted: o.TrustedKeys, RequireTrust: true, Keys: o.Keys, Auth: o.Auth.With(o.Keys.Auth()), RequireAuth: true})
	if err != nil {
		return err
	}
	// A manifest that could not be read (access, the network) refuses the
	// prune: it may be any backup. One that was read and is not a manifest
	// (ErrCorrupt) stops only the chunk sweep, so that one object a writer
	// with PUT rights drops into manifests/ cannot stop retention for ever.
	var unread []string
	for _, b := range cat.Broken {
		if errors.Is(b.Err, ErrCorrupt) {
			res.Unreadable = append(res.Unreadable, fmt.Sprintf("%s (%v)", b.Key, b.Err))
			res.NoChunkSweep = true
			continue
		}
		unread = append(unread, fmt.Sprintf("%s (%v)", b.Key, b.Err))
	}
	if len(unread) > 0 {
		return fmt.Errorf("%w: %s; nothing was deleted. Fix the store's access, or move unreadable manifests out of %s, then prune again",
			ErrIncompleteView, strings.Join(unread, "; "), ManifestsPrefix)
	}
	referenced := map[string]bool{}
	// Latest pointers name manifests too; their chunks stay.
	var unreadLatest []string
	err = s.List(ctx, LatestPrefix, "", func(oi ObjectInfo) error {
		m, err := ReadManifest(ctx, s, oi.Key)
		if errors.Is(err, ErrNotFound) {
			return nil // deleted meanwhile
		}
		if err != nil {
			unreadLatest = append(unreadLatest, fmt.Sprintf("%s (%v)", oi.Key, err))
			return nil
		}
		for _, ob := range m.Objects() {
			referenced[ob.SHA256] = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list latest pointers: %w", err)
	}
	if len(unreadLatest) > 0 {
		return fmt.Errorf("%w: latest pointers %s; nothing was deleted. Delete a damaged pointer (the next backup of its partition writes it again), then prune again",
			ErrIncompleteView, strings.Join(unreadLatest, "; "))
	}
	// Manifests prune does not believe (strays) or that claim a time after
	// now (a writer with PUT rights only could otherwise push every genuine
	// backup out of --keep-last) neither count in its decisions nor are
	// deleted: what they name stays.
	for _, st := range cat.Strays {
		res.Ignored = append(res.Ignored, fmt.Sprintf("%s: %s", st.Key, st.Reason))
		for _, ob := range st.Manifest.Objects() {
			referenced[ob.SHA256] = true
		}
	}
	believed := cat.Manifests[:0:0]
	for _, m := range cat.Manifests {
		if FutureDated(m, now) {
			res.Ignored = append(res.Ignored, fmt.Sprintf("%s: dated %s, more than %v in the future: not counted, not deleted", cat.Keys[m], m.ID, FutureSkew))
			for _, ob := range m.Objects() {
				referenced[ob.SHA256] = true
			}
			continue
		}
		believed = append(believed, m)
	}
	cat.Manifests = believed
	if err := retire(ctx, s, cat, o, now, res); err != nil {
		return err
	}
	keep := map[*Manifest]bool{}
	for uid, ms := range cat.Flows() {
		reg, err := LoadRegistryWith(ctx, s, uid, cat.Policy(o.TrustedKeys))
		if err != nil {
			return err
		}
		byPart := map[int][]*Manifest{}
		count := 0
		for _, m := range ms {
			byPart[m.Partition.Index] = append(byPart[m.Partition.Index], m)
			count = max(count, m.Partition.Count)
		}
		policy := o.policy()
		for _, list := range byPart {
			for m, why := range policy.Keep(list, now) {
				keep[m] = true
				if res.Reasons != nil {
					res.Reasons[cat.Keys[m]] = why
				}
			}
		}
		// The newest restore of every live history stays restorable.
		for _, ov := range RestorePoints(ms, count, reg) {
			for _, m := range ov.Chosen {
				if !keep[m] {
					res.Protected = append(res.Protected, cat.Keys[m])
				}
				keep[m] = true
			}
		}
	}
	// A locked backup is kept, whatever the policy says, until its lock ends.
	locks := newPruneLocks(s, now, res)
	if err := locks.keepLocked(ctx, cat, keep); err != nil {
		return err
	}
	for _, m := range cat.Manifests {
		if !keep[m] {
			continue
		}
		res.KeptManifests++
		for _, ob := range m.Objects() {
			referenced[ob.SHA256] = true
		}
	}
	if lock != nil {
		// Everything was read under the lock; make sure it still is ours
		// before the first delete.
		if err := lock.Check(ctx); err != nil {
			return err
		}
	}
	for _, m := range cat.Manifests {
		if keep[m] {
			continue
		}
		key := cat.Keys[m]
		res.DeletedManifests = append(res.DeletedManifests, key)
		if !o.DryRun {
			if err := s.Delete(ctx, key); err != nil {
				return fmt.Errorf("delete %s: %w", key, err)
			}
		}
	}
	if res.NoChunkSweep {
		return nil
	}
	quarantined, err := LoadQuarantine(ctx, s)
	if err != nil {
		return err
	}
	// The chunk listing streams; chunks are deleted as they are found.
	err = s.List(ctx, ChunksPrefix, "", func(oi ObjectInfo) error {
		h := oi.Key[len(oi.Key)-min(64, len(oi.Key)):]
		if referenced[h] {
			return nil
		}
		if now.Sub(oi.Modified) <= o.Grace {
			res.HeldChunks++
			res.HeldBytes += oi.Size
			if at := oi.Modified.Add(o.Grace); res.HeldUntil.IsZero() || at.After(res.HeldUntil) {
				res.HeldUntil = at
			}
			return nil
		}
		if locked, err := locks.held(ctx, oi.Key, oi); err != nil || locked {
			return err
		}
		if !o.DryRun {
			if err := s.Delete(ctx, oi.Key); err != nil {
				return fmt.Errorf("delete %s: %w", oi.Key, err)
			}
			// A quarantine marker of a chunk that is gone has nothing left
			// to heal.
			if quarantined[h] {
				if err := s.Delete(ctx, QuarantineKey(h)); err != nil {
					return fmt.Errorf("delete %s: %w", QuarantineKey(h), err)
				}
			}
		}
		res.DeletedChunks++
		res.DeletedBytes += oi.Size
		return nil
	})
	if err != nil {
		return fmt.Errorf("prune chunks: %w", err)
	}
	if sw, ok := s.(TempSweeper); ok && !o.DryRun {
		n, err := sw.SweepTemp(ctx, o.Grace)
		res.SweptTemp = n
		if err != nil {
			return err
		}
	}
	return nil
}

// retire records the lineages o retires (see RetireNamed).
func retire(ctx context.Context, s Store, cat *Catalog, o PruneOptions, now time.Time, res *PruneResult) error {
	ids, err := RetireNamed(ctx, s, cat, o.RetireLineages, o.DryRun, now, o.SigningKey, o.TrustedKeys)
	res.Retired = ids
	return err
}

// RetireNamed retires each lineage named (by id or unique prefix) among
// the lineages of cat's manifests; dryRun only resolves the names. An
// unknown or ambiguous name is ErrNoSuchLineage, before anything is
// written; so is a retirement in a signed location without k (an unsigned
// one would not count), and one of the lineage restores use now (retire
// the other one; or make the one to keep current first, with --take-over).
func RetireNamed(ctx context.Context, s Store, cat *Catalog, names []string, dryRun bool, now time.Time, k *SigningKey, trusted *TrustedKeys) ([]string, error) {
	if len(names) > 0 && cat.Location.Signed && k == nil {
		return nil, fmt.Errorf("%w: retiring a lineage here needs --signing-key (the backups are signed; an unsigned retirement would not count)", ErrSigningMismatch)
	}
	ms := cat.Manifests
	type hit struct{ uid, id string }
	var hits []hit
	for _, want := range names {
		want = strings.ToLower(want)
		var found []hit
		for _, m := range ms {
			h := hit{m.Flow.UID, m.LineageOf().ID}
			if strings.HasPrefix(h.id, want) && !slices.Contains(found, h) {
				found = append(found, h)
			}
		}
		switch len(found) {
		case 0:
			return nil, fmt.Errorf("%w: no backups of lineage %q here (flowbackup list shows the lineages); nothing was changed", ErrNoSuchLineage, want)
		case 1:
			hits = append(hits, found[0])
		default:
			return nil, fmt.Errorf("%w: %q names %d lineages; give more of the id; nothing was changed", ErrNoSuchLineage, want, len(found))
		}
	}
	flows := cat.Flows()
	for _, h := range hits {
		reg, err := LoadRegistryWith(ctx, s, h.uid, cat.Policy(trusted))
		if err != nil {
			return nil, err
		}
		count := 0
		for _, m := range flows[h.uid] {
			count = max(count, m.Partition.Count)
		}
		if ov, ok := PlanLineage(flows[h.uid], count, reg, "", 0); ok && ov.Lineage.ID == h.id {
			return nil, fmt.Errorf("%w: lineage %s is the history restores use now; retire the other one (flowbackup list shows them), or first make the one to keep current (its agent's --take-over); nothing was changed",
				ErrRetireCurrent, recovery.ShortID(h.id))
		}
	}
	var ids []string
	for _, h := range hits {
		if !dryRun {
			if err := RetireLineage(ctx, s, h.uid, h.id, now, k, cat.Auth); err != nil {
				return ids, err
			}
		}
		ids = append(ids, h.id)
	}
	return ids, nil
}

// ErrRetireCurrent says an operator asked to retire the lineage restores
// use now.
var ErrRetireCurrent = errors.New("refusing to retire the current lineage")

// ErrNoSuchLineage says a lineage named by an operator has no backups.
var ErrNoSuchLineage = errors.New("no such lineage")
