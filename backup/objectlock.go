package backup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/internal/human"
)

// Object lock (immutable backups). With Options.ObjectLock a backup locks
// every object that makes up a backup, so that nobody (the agent's own
// credentials included) can delete or replace it before the lock ends:
//
//   - chunks, manifests and the lineage registry events a backup writes
//     (claims, fences) are written locked, in one request each
//     (Retainer.PutRetained: S3 Object Lock headers, GCS object retention);
//   - a chunk a backup reuses (a delta's base, an unchanged chunk of a new
//     base, a chunk another partition stored) has its lock extended when it
//     would end before the new backup's, so every object of a protected
//     backup stays protected as long as the backup is. A lock is learned
//     from the HEAD that confirms the chunk anyway, and extended by an extra
//     step (ObjectLock.Step), so a chunk reused by every backup is extended
//     once a step, not once a backup;
//   - latest pointers, heartbeats, locks, quarantine markers and the
//     location's config are not locked: they are overwritten or deleted in
//     normal work (a lock must be deletable by its holder, and on GCS a
//     retained object cannot be replaced), and none of them is needed to
//     restore (a restore reads manifests and chunks).
//
// Prune never deletes a locked object: it keeps a locked backup (and so
// its chunks) whatever the retention policy says, skips locked chunks, and
// reports them; a prune after their locks end removes them. An idle flow's
// newest backup is backed up again before its lock runs low, so the state
// a restore would lay down is always under a lock.

// LockMode is an object lock's mode, named as S3 Object Lock names them.
type LockMode string

const (
	// LockGovernance: a principal allowed to bypass governance retention
	// (S3 s3:BypassGovernanceRetention, GCS an Unlocked retention and
	// storage.objects.overrideUnlockedRetention) may shorten or remove the
	// lock; nobody else may.
	LockGovernance LockMode = "GOVERNANCE"
	// LockCompliance: nobody, an account's root included, may shorten or
	// remove the lock before it ends (GCS: a Locked retention).
	LockCompliance LockMode = "COMPLIANCE"
)

// Retention is an object's lock: the object can be neither deleted nor
// replaced before Until. The zero Retention is no lock.
type Retention struct {
	Mode  LockMode
	Until time.Time
}

// Holds reports whether the lock still holds at now.
func (r Retention) Holds(now time.Time) bool { return r.Until.After(now) }

// Retainer is implemented by stores whose objects can be locked against
// deletion and replacement until a time (S3 Object Lock, GCS object
// retention). Their Stat reports an object's lock in ObjectInfo.Retention
// (a List may too, where the backend's listing carries it).
type Retainer interface {
	// PutRetained writes data at key only if no object is there (an error
	// wrapping ErrExists otherwise, as PutIfAbsent), locked by r from the
	// moment it is visible: one request. A bucket that cannot lock objects
	// is an error wrapping ErrNoObjectLock.
	PutRetained(ctx context.Context, key string, data []byte, r Retention) error
	// SetRetention locks the object at key until r.Until, in r.Mode.
	// Callers only ever ask for a later Until than the object has: the
	// backends refuse to shorten a lock (S3 without a bypass, GCS without
	// an override), and so may refuse a mode change. A missing object is
	// an error wrapping ErrNotFound.
	SetRetention(ctx context.Context, key string, r Retention) error
	// Undelete makes every object under prefix that is still locked
	// current again where a deletion or a later write hid it. Where the
	// store keeps versions (S3 with versioning, which Object Lock needs), a
	// plain DELETE only stacks a delete marker on a locked version, and a
	// PUT stacks a newer version on it: for each such key, the oldest
	// version still under lock becomes current again (a copy of it, with
	// its lock), and fn is told the key. Stores where a locked object can
	// be neither deleted nor replaced (GCS) have nothing to undo: 0.
	Undelete(ctx context.Context, prefix string, fn func(key string)) (int, error)
}

// Errors of object lock.
var (
	// ErrNoObjectLock says a store or bucket cannot lock objects: a
	// file:// location, an S3 bucket created without Object Lock, a GCS
	// bucket without object retention enabled.
	ErrNoObjectLock = errors.New("the location cannot lock objects")
	// ErrObjectLocked says an object could not be deleted or replaced
	// because it is locked.
	ErrObjectLocked = errors.New("object is locked (object lock / retention)")
)

// RetainerOf returns s as a Retainer, looking through WithRetry (whose
// calls are then retried too); nil if s cannot lock objects.
func RetainerOf(s Store) Retainer {
	if rt, ok := s.(*retrying); ok {
		in := RetainerOf(rt.s)
		if in == nil {
			return nil
		}
		return retryingRetainer{rt, in}
	}
	r, _ := s.(Retainer)
	return r
}

type retryingRetainer struct {
	rt *retrying
	in Retainer
}

func (r retryingRetainer) PutRetained(ctx context.Context, key string, data []byte, ret Retention) error {
	return r.rt.do(ctx, "put "+key, func() error { return r.in.PutRetained(ctx, key, data, ret) })
}

func (r retryingRetainer) SetRetention(ctx context.Context, key string, ret Retention) error {
	return r.rt.do(ctx, "lock "+key, func() error { return r.in.SetRetention(ctx, key, ret) })
}

// Undelete is not retried as a whole (it copies as it goes; run it again).
func (r retryingRetainer) Undelete(ctx context.Context, prefix string, fn func(string)) (int, error) {
	return r.in.Undelete(ctx, prefix, fn)
}

// ObjectLock is what --object-lock asks for: every object a backup writes
// is locked in Mode for Period from the backup's start.
type ObjectLock struct {
	Mode   LockMode
	Period time.Duration
}

// MaxLockPeriod is the longest lock accepted (S3's own bound: 100 years).
const MaxLockPeriod = 36500 * 24 * time.Hour

// ParseObjectLock parses MODE:DURATION, e.g. "GOVERNANCE:30d" or
// "compliance:2w" (durations as internal/human reads them).
func ParseObjectLock(s string) (ObjectLock, error) {
	mode, dur, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return ObjectLock{}, fmt.Errorf("object lock %q: give MODE:DURATION, e.g. GOVERNANCE:30d or COMPLIANCE:90d", s)
	}
	l := ObjectLock{Mode: LockMode(strings.ToUpper(strings.TrimSpace(mode)))}
	if l.Mode != LockGovernance && l.Mode != LockCompliance {
		return ObjectLock{}, fmt.Errorf("object lock %q: the mode is GOVERNANCE or COMPLIANCE, not %q", s, mode)
	}
	d, err := human.ParseDuration(dur)
	if err != nil {
		return ObjectLock{}, fmt.Errorf("object lock %q: %w", s, err)
	}
	if d <= 0 || d > MaxLockPeriod {
		return ObjectLock{}, fmt.Errorf("object lock %q: the duration must be positive and at most 36500d", s)
	}
	l.Period = d
	return l, nil
}

func (l ObjectLock) String() string { return fmt.Sprintf("%s:%v", l.Mode, l.Period) }

// Step is how much longer than Period a chunk is locked when it is
// written or its lock extended: a quarter of Period, at most a day. A
// chunk reused by every backup then has its lock extended once a Step,
// not once a backup, for at most Step of lock beyond what its backups need.
func (l ObjectLock) Step() time.Duration { return min(l.Period/4, 24*time.Hour) }

// locker locks what one backup writes and extends what it reuses, to at
// least need (the backup's start plus Period).
type locker struct {
	r    Retainer
	s    Store
	mode LockMode
	need time.Time     // every object of the backup is locked at least until then
	step time.Duration // chunks get need+step when they are locked or extended
	now  func() time.Time
}

func newLocker(s Store, l *ObjectLock, start time.Time, now func() time.Time) (*locker, error) {
	if l == nil {
		return nil, nil
	}
	r := RetainerOf(s)
	if r == nil {
		return nil, fmt.Errorf("%w: %s has no object lock (file:// cannot lock files); use an s3:// bucket created with Object Lock enabled, or a gs:// bucket with object retention enabled", ErrNoObjectLock, s)
	}
	return &locker{r: r, s: s, mode: l.Mode, need: start.Add(l.Period), step: l.Step(), now: now}, nil
}

// chunk is the lock a chunk is written or extended with.
func (lk *locker) chunk() Retention { return Retention{Mode: lk.mode, Until: lk.need.Add(lk.step)} }

// put writes a manifest or registry event locked until need. An object
// already there (a retried write whose answer was lost) of the same size
// is taken for this write's and its lock extended if need be.
func (lk *locker) put(ctx context.Context, key string, data []byte) error {
	err := lk.r.PutRetained(ctx, key, data, Retention{Mode: lk.mode, Until: lk.need})
	if !errors.Is(err, ErrExists) {
		return err
	}
	oi, serr := lk.s.Stat(ctx, key)
	if serr != nil {
		return fmt.Errorf("%w; and reading it back: %v", err, serr)
	}
	if oi.Size != int64(len(data)) {
		return fmt.Errorf("%s is already stored with another content (%d bytes, not %d), and locked objects are never replaced: %w", key, oi.Size, len(data), err)
	}
	return lk.keep(ctx, oi)
}

// keep extends the lock of the object oi describes (as a Stat read it) to
// need+step when it would end before need; a lock that lasts long enough
// costs no request. The object's own mode is kept (changing a GOVERNANCE
// lock to COMPLIANCE needs a bypass the agent does not hold).
func (lk *locker) keep(ctx context.Context, oi ObjectInfo) error {
	if !oi.Retention.Until.Before(lk.need) {
		return nil
	}
	r := lk.chunk()
	if oi.Retention.Mode != "" && oi.Retention.Holds(lk.now()) {
		r.Mode = oi.Retention.Mode
	}
	if err := lk.r.SetRetention(ctx, oi.Key, r); err != nil {
		// Another backup may have extended it meanwhile, further than this
		// one asks (a backend refuses to shorten a lock).
		if cur, serr := lk.s.Stat(ctx, oi.Key); serr == nil && !cur.Retention.Until.Before(lk.need) {
			return nil
		}
		return fmt.Errorf("extend the lock of %s to %s: %w", oi.Key, r.Until.UTC().Format(time.RFC3339), err)
	}
	return nil
}

// runsLow reports whether the newest backup m's manifest is locked for
// less than Period-Step from now: an idle partition is then backed up
// again (which locks its objects anew) instead of skipped.
func (lk *locker) runsLow(ctx context.Context, m *Manifest) (bool, error) {
	oi, err := lk.s.Stat(ctx, ManifestKey(m.Flow.UID, m.Partition.Index, m.ID))
	if errors.Is(err, ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the lock of the latest backup: %w", err)
	}
	return oi.Retention.Until.Before(lk.need.Add(-lk.step)), nil
}

// lockedEvents is a store whose PutIfAbsent of lineage registry events
// writes them locked (gateLineage writes claims and fences through it).
type lockedEvents struct {
	Store
	lk *locker
}

func (s lockedEvents) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	if !strings.HasPrefix(key, LineagesPrefix) {
		return s.Store.PutIfAbsent(ctx, key, data)
	}
	return s.lk.r.PutRetained(ctx, key, data, Retention{Mode: s.lk.mode, Until: s.lk.need})
}

// pruneLocks tells prune which of the objects it would delete are locked,
// and counts them in its result.
type pruneLocks struct {
	s   Store
	on  bool // the store can lock objects: ask before each delete
	now time.Time
	res *PruneResult
}

func newPruneLocks(s Store, now time.Time, res *PruneResult) *pruneLocks {
	return &pruneLocks{s: s, on: RetainerOf(s) != nil, now: now, res: res}
}

// held reports whether the object at key (oi as a listing gave it, or the
// zero ObjectInfo) is locked now, from its listing or else a Stat, and
// counts it if so. Stores that cannot lock objects cost no request.
func (p *pruneLocks) held(ctx context.Context, key string, oi ObjectInfo) (bool, error) {
	if !p.on {
		return false, nil
	}
	if !oi.Retention.Holds(p.now) {
		var err error
		if oi, err = p.s.Stat(ctx, key); errors.Is(err, ErrNotFound) {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("read the lock of %s: %w", key, err)
		}
	}
	if !oi.Retention.Holds(p.now) {
		return false, nil
	}
	p.res.LockedObjects++
	p.res.LockedBytes += oi.Size
	if oi.Retention.Until.After(p.res.LockedUntil) {
		p.res.LockedUntil = oi.Retention.Until
	}
	return true, nil
}

// keepLocked keeps every manifest prune would delete that is locked (and
// so its chunks), and lists it in res.LockedManifests.
func (p *pruneLocks) keepLocked(ctx context.Context, cat *Catalog, keep map[*Manifest]bool) error {
	if !p.on {
		return nil
	}
	for _, m := range cat.Manifests {
		if keep[m] {
			continue
		}
		locked, err := p.held(ctx, cat.Keys[m], ObjectInfo{})
		if err != nil {
			return err
		}
		if locked {
			keep[m] = true
			p.res.LockedManifests = append(p.res.LockedManifests, cat.Keys[m])
		}
	}
	return nil
}
