package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"filippo.io/age"

	"golang.org/x/sync/errgroup"

	"github.com/flowkeep/flowkeep/internal/machine"
	"github.com/flowkeep/flowkeep/internal/version"
	"github.com/flowkeep/flowkeep/recovery"
)

// Defaults and bounds of Options. They are named because other settings
// depend on them: prune's chunk grace must outlast a backup's lock, and a
// delta's base must be younger than the time GC remembers dropped keys.
const (
	// DefaultWorkers is how many chunks a backup uploads at once.
	DefaultWorkers = 8
	// DefaultParallel is how many partitions back up (or restore) at once.
	DefaultParallel = 4
	// DefaultLockTTL is how long a lock lasts when its holder dies.
	DefaultLockTTL = 15 * time.Minute
	// MinLockTTL is the shortest lock TTL accepted: a lock must outlast the
	// store round trips that renew it.
	MinLockTTL = 10 * time.Second
	// MaxLockTTL is the longest lock TTL accepted. A lock that claims to
	// be held longer than that from now is no lock an agent wrote (a
	// bucket writer's, or a clock far ahead): it is counted as held for
	// MaxLockTTL from when the store says it was last written.
	MaxLockTTL = time.Hour
	// DefaultBaseMaxAge is the age after which a base image is recaptured.
	DefaultBaseMaxAge = 48 * time.Hour
	// MaxBaseMaxAge bounds BaseMaxAge: a delta over an older base could miss
	// keys whose tombstones GC dropped and forgot (recovery.DroppedRetention),
	// less an hour of margin for clocks.
	MaxBaseMaxAge = recovery.DroppedRetention - time.Hour
	// DefaultCatalogWorkers is how many manifests are read at once.
	DefaultCatalogWorkers = 32
)

// Options configure backups. Zero values take the defaults above.
type Options struct {
	// Workers uploads this many chunks at once (DefaultWorkers).
	Workers int
	// TempDir holds delta files while they are built (default os.TempDir()).
	TempDir string
	// LockTTL is how long a partition lock lasts if its holder dies
	// (DefaultLockTTL, at least MinLockTTL).
	LockTTL time.Duration
	// Holder names this agent in locks (default host/pid/random).
	Holder string
	// BaseMaxAge: a base older than this is recaptured (DefaultBaseMaxAge,
	// at most MaxBaseMaxAge).
	BaseMaxAge time.Duration
	// Now returns wall time (default time.Now).
	Now func() time.Time
	// Partitions, if set, backs up only these partition indexes.
	Partitions []int
	// Parallel backs up this many partitions at once (DefaultParallel).
	Parallel int
	// Progress, if set, counts every partition's reads and uploads as they
	// happen (for a progress display).
	Progress *Transfer
	// Memory bounds the chunk data every partition of the backup holds in
	// memory at once (default: a budget of DefaultMemory bytes, shared by
	// the partitions of one BackupDir).
	Memory *Budget
	// SkipUnchanged skips a partition whose restorable range and execution
	// are those of its latest backup (an idle flow), unless verify
	// quarantined chunks that a new backup would heal.
	SkipUnchanged bool
	// Recipients, if set, encrypts the backups to these age recipients
	// (see Cipher); the chunk key is kept in the recovery directory
	// (ChunkKeyFile). A location holds encrypted or plaintext backups,
	// never both (see CheckScheme).
	Recipients []age.Recipient
	// SigningKey, if set, signs every manifest, latest pointer and lineage
	// registry event (see SigningKey); the location's config then says it
	// holds signed backups, and an unsigned backup to it is refused.
	SigningKey *SigningKey
	// TrustedKeys are other writers' public keys whose registry events
	// (claims, fences) this backup believes in a signed location, besides
	// its own key's.
	TrustedKeys *TrustedKeys
	// TakeOver makes this backup's lineage the flow's current history when
	// a newer lineage claims the location (which fences backups otherwise;
	// see LineageGate). The other lineage's backups are fenced from then on.
	TakeOver bool
	// Tags label every backup taken (see Retention.Tags): at most
	// MaxTags, each as ValidateTag allows.
	Tags []string
	// ObjectLock, if set, locks every chunk, manifest and lineage registry
	// event a backup writes for ObjectLock.Period from the backup's start,
	// and extends the locks of the chunks it reuses (see objectlock.go).
	// The store must be a Retainer (ErrNoObjectLock otherwise).
	ObjectLock *ObjectLock
}

// Validate refuses settings that would make backups unsafe.
func (o Options) Validate() error {
	switch {
	case o.Workers < 0:
		return fmt.Errorf("workers must be positive, got %d", o.Workers)
	case o.Parallel < 0:
		return fmt.Errorf("parallel partitions must be positive, got %d", o.Parallel)
	case o.LockTTL < 0 || (o.LockTTL > 0 && o.LockTTL < MinLockTTL):
		return fmt.Errorf("lock TTL %v is too short: at least %v (a shorter lock could expire while its holder works)", o.LockTTL, MinLockTTL)
	case o.LockTTL > MaxLockTTL:
		return fmt.Errorf("lock TTL %v is too long: at most %v (locks are renewed while their holder works; the TTL only bounds how long a dead agent blocks others)", o.LockTTL, MaxLockTTL)
	case len(o.Tags) > MaxTags:
		return fmt.Errorf("%d tags: at most %d", len(o.Tags), MaxTags)
	case o.BaseMaxAge < 0 || o.BaseMaxAge > MaxBaseMaxAge:
		return fmt.Errorf("base max age %v is out of range: at most %v, as GC remembers dropped keys for %v", o.BaseMaxAge, MaxBaseMaxAge, recovery.DroppedRetention)
	case o.ObjectLock != nil && (o.ObjectLock.Period <= 0 || o.ObjectLock.Period > MaxLockPeriod || (o.ObjectLock.Mode != LockGovernance && o.ObjectLock.Mode != LockCompliance)):
		return fmt.Errorf("object lock %s: the mode is GOVERNANCE or COMPLIANCE and the period positive, at most %v", o.ObjectLock, MaxLockPeriod)
	}
	for _, t := range o.Tags {
		if err := ValidateTag(t); err != nil {
			return err
		}
	}
	return nil
}

func (o *Options) defaults() {
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.Parallel <= 0 {
		o.Parallel = DefaultParallel
	}
	if o.LockTTL <= 0 {
		o.LockTTL = DefaultLockTTL
	}
	if o.Memory == nil {
		o.Memory = NewBudget(DefaultMemory)
	}
	if o.BaseMaxAge <= 0 {
		o.BaseMaxAge = DefaultBaseMaxAge
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Holder == "" {
		var r [4]byte
		rand.Read(r[:])
		o.Holder = fmt.Sprintf("%s/%d/%s", machine.ID(), os.Getpid(), hex.EncodeToString(r[:]))
	}
}

// Result reports one partition's backup.
type Result struct {
	Partition       int
	Manifest        *Manifest
	Kind            string // "base" or "delta"
	ObjectsUploaded int64
	// ObjectsSkipped were already stored: confirmed present, with their
	// size, before the manifest named them.
	ObjectsSkipped int64
	// ObjectsHealed were named by the previous backup but missing, of the
	// wrong size, or quarantined by verify: uploaded again.
	ObjectsHealed int64
	BytesUploaded int64
	BytesRead     int64
	// BaseNote says why a new base was taken when a delta was possible
	// (e.g. the base's chunks were not all stored).
	BaseNote string
	// CaptureNote, if set, says why a base was uploaded straight from the
	// partition, holding its read transaction (and so the WAL's growth)
	// for the whole upload, instead of staged in TempDir first.
	CaptureNote string
	// Skipped, if set, says why no backup was taken (SkipUnchanged); the
	// Manifest is then the latest one, which still stands.
	Skipped  string
	Duration time.Duration
	Err      error
	// Gate is what the backup learned about its flow's lineages (nil for a
	// partition that was not gated: restored and not run since).
	Gate *LineageGate
	// Fork, if set, says another history of the flow is alive (from the
	// registry, or the partition's latest backup).
	Fork string
}

// Why a partition's backup was skipped.
const (
	SkipUnchanged = "unchanged" // the partition did not move since its latest backup
	SkipLocked    = "locked"    // another agent or a prune holds the lock
	// SkipRestored: a restore laid the partition down and no run has
	// started since; every epoch it holds is in the backups it came from,
	// and its new lineage is decided by its first run.
	SkipRestored = "restored"
)

// Version is the flowkeep version recorded in manifests.
func Version() string { return version.String() }

// LoadLatest returns the newest manifest of a partition, from its latest
// pointer; nil if there is none, or if it is corrupt (the next backup is
// then a full one, and rewrites the pointer). Any other read error is
// returned: an unread pointer is not a missing one. An encrypted one is
// ErrEncryptionMismatch (LoadLatestWith reads those).
func LoadLatest(ctx context.Context, s Store, uid string, idx int) (*Manifest, error) {
	return LoadLatestWith(ctx, s, uid, idx, nil)
}

// LoadLatestWith is LoadLatest for backups sealed with c (nil: plaintext).
// An encrypted pointer that c cannot open (sealed under another chunk key)
// is nil as well: the next backup takes a new base under c's key. So is a
// plaintext one when c is set: in an encrypted location anyone who can
// write to the bucket can make one, and its config (checked before, see
// CheckScheme) says which scheme the location holds. An encrypted one
// when c is nil is ErrEncryptionMismatch: the config may be gone, and the
// partition's own chain still says its scheme.
func LoadLatestWith(ctx context.Context, s Store, uid string, idx int, c *Cipher) (*Manifest, error) {
	m, err := ReadManifestWith(ctx, s, LatestKey(uid, idx), c)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read latest pointer: %w", err)
	}
	switch {
	case m.Encryption != nil && c == nil:
		return nil, fmt.Errorf("%w: the latest backup of partition %d in %s is encrypted: give --recipients-file", ErrEncryptionMismatch, idx, s)
	case m.Encryption == nil && c != nil:
		return nil, nil
	}
	if m.Flow.UID != uid || m.Partition.Index != idx || m.Locked || m.Encryption.KeyID() != c.KeyID() {
		return nil, nil
	}
	return m, nil
}

// latest is the partition's latest backup as this Repo may build on it:
// LoadLatestWith, and in a signed location only a pointer signed by a
// trusted key (its own or TrustedKeys'). An unsigned one there could
// name a forged base that the next delta would then vouch for.
func (r *Repo) latest(ctx context.Context, uid string, idx int) (*Manifest, error) {
	m, err := LoadLatestWith(ctx, r.store, uid, idx, r.cipher)
	if err != nil || m == nil || r.opts.SigningKey == nil {
		return m, err
	}
	if !m.SignedBy(r.opts.SigningKey.Public().With(r.opts.TrustedKeys)) {
		return nil, nil
	}
	return m, nil
}

// Repo is a location opened for backups: the store, with what Options ask
// for resolved once (the cipher made from Recipients and the recovery
// directory's chunk key, the location's scheme and signing checked, verify's
// quarantine loaded). Options stay plain configuration: a Repo never writes
// into them. A Repo serves any number of partitions' backups at once; open a
// new one to see quarantine changes made since.
type Repo struct {
	store Store
	opts  Options
	// cipher seals this backup's objects (nil: plaintext).
	cipher *Cipher
	// quarantined are the chunks verify found damaged.
	quarantined map[string]bool
}

// OpenRepo checks o, makes the cipher (dir is the recovery directory,
// which keeps the chunk key), checks the location's scheme and signing
// (writing its config if it has none) and loads verify's quarantine.
func OpenRepo(ctx context.Context, s Store, dir string, o Options) (*Repo, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.defaults()
	r := &Repo{store: s, opts: o}
	if _, err := newLocker(s, o.ObjectLock, o.Now(), o.Now); err != nil {
		return nil, err
	}
	if o.Recipients != nil {
		c, err := SealerFor(dir, o.Recipients, o.Now())
		if err != nil {
			return nil, err
		}
		r.cipher = c
	}
	if err := CheckLocation(ctx, s, r.cipher.Auth(), o.SigningKey, o.TrustedKeys, o.Now()); err != nil {
		return nil, err
	}
	q, err := LoadQuarantine(ctx, s)
	if err != nil {
		return nil, err
	}
	r.quarantined = q
	return r, nil
}

// BackupDir backs up every partition in dir (all of one flow; a cluster
// machine may hold only some). It fails before uploading anything if dir
// holds no partitions; per-partition failures are in the results and in the
// joined error.
func BackupDir(ctx context.Context, s Store, dir string, o Options) ([]*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.defaults()
	ps, err := recovery.Find(ctx, dir, true)
	if err != nil {
		return nil, err
	}
	defer recovery.CloseAll(ps)
	if len(ps) == 0 {
		return nil, fmt.Errorf("%w in %s: nothing to back up (is -r the flow's recovery directory?)", recovery.ErrNoPartitions, dir)
	}
	if o.Partitions != nil {
		want := map[int]bool{}
		for _, i := range o.Partitions {
			want[i] = true
		}
		var keep []*recovery.Partition
		for _, p := range ps {
			if want[int(p.Index)] {
				keep = append(keep, p)
				delete(want, int(p.Index))
			}
		}
		if len(want) > 0 {
			var miss []int
			for i := range want {
				miss = append(miss, i)
			}
			return nil, fmt.Errorf("%w: partitions %v are not in %s", recovery.ErrMissingPartitions, miss, dir)
		}
		ps = keep
	}
	// Only now that the request is known to be good may the location's
	// config be written.
	r, err := OpenRepo(ctx, s, dir, o)
	if err != nil {
		return nil, err
	}
	gates, err := r.gatePartitions(ctx, ps)
	if err != nil {
		return nil, err
	}
	results := make([]*Result, len(ps))
	var g errgroup.Group
	g.SetLimit(o.Parallel)
	for i, p := range ps {
		g.Go(func() error {
			switch gate := gates[i]; {
			case gate == nil:
				results[i] = &Result{Partition: int(p.Index), Skipped: SkipRestored}
			case gate.Fenced:
				results[i] = &Result{Partition: int(p.Index), Gate: gate, Fork: gate.Fork, Err: fmt.Errorf("back up partition %d: %w", p.Index, fencedError(gate))}
			default:
				results[i] = r.BackupPartition(ctx, p)
				results[i].Gate = gate
				if results[i].Fork == "" {
					results[i].Fork = gate.Fork
				}
			}
			return nil
		})
	}
	g.Wait()
	var errs []error
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, r.Err)
		}
	}
	return results, errors.Join(errs...)
}

// gatePartitions checks each partition's lineage against the location's
// registry, once per lineage (see gateLineage): nil for a partition that
// was restored and not run since (nothing to back up).
func (r *Repo) gatePartitions(ctx context.Context, ps []*recovery.Partition) ([]*LineageGate, error) {
	s, o := r.store, r.opts
	out := make([]*LineageGate, len(ps))
	byID := map[string]*LineageGate{}
	var live []*recovery.View
	for _, p := range ps {
		v, err := recovery.ReadView(ctx, p.DB)
		if err != nil {
			return nil, fmt.Errorf("partition %d: %w", p.Index, err)
		}
		if !v.Pending {
			live = append(live, v)
		}
	}
	// With object lock, the claims and fences written here are locked too.
	lk, err := newLocker(s, o.ObjectLock, o.Now(), o.Now)
	if err != nil {
		return nil, err
	}
	if lk != nil {
		s = lockedEvents{s, lk}
	}
	// A directory flowrun would refuse (two histories) is not backed up.
	if err := recovery.CheckOneHistory(live); err != nil {
		return nil, err
	}
	for i, p := range ps {
		l, pending, err := recovery.ReadLineage(ctx, p.DB)
		if err != nil {
			return nil, fmt.Errorf("partition %d: %w", p.Index, err)
		}
		if pending {
			continue
		}
		g := byID[l.ID]
		if g == nil {
			if g, err = gateLineage(ctx, s, p.FlowUID, l, o.TakeOver, o.SigningKey, o.TrustedKeys, r.cipher.Auth(), o.Now()); err != nil {
				return nil, err
			}
			byID[l.ID] = g
		}
		out[i] = g
	}
	return out, nil
}

// fencedError says why a backup was fenced and what to do.
func fencedError(g *LineageGate) error {
	if g.Retired {
		return fmt.Errorf("%w: an operator retired this machine's %s (flowbackup prune --retire-lineage): its machine was taken for gone. Stop this machine's flowrun and agent, or pass --take-over to make its history the one restores use again",
			ErrFenced, g.Lineage.Describe())
	}
	return fmt.Errorf("%w: lineage %s claimed flow backups here at %s, after this machine's %s; another machine runs a newer history of this flow (a restore, or a copy of these files). Stop this machine's flowrun and agent, or pass --take-over to make this machine's history the one restores use",
		ErrFenced, recovery.ShortID(g.By), g.At.UTC().Format(time.RFC3339), g.Lineage.Describe())
}

// BackupPartition takes one backup of p (see Repo.BackupPartition) in a
// Repo opened for it.
func BackupPartition(ctx context.Context, s Store, p *recovery.Partition, o Options) *Result {
	r, err := OpenRepo(ctx, s, filepath.Dir(p.Path), o)
	if err != nil {
		return &Result{Partition: int(p.Index), Err: fmt.Errorf("back up partition %d: %w", p.Index, err)}
	}
	return r.BackupPartition(ctx, p)
}

// BackupPartition takes one backup of p under its lock, which it renews
// while it works (losing it cancels the backup), and refuses to start while
// a prune runs. Every chunk the manifest names is confirmed stored, with its
// size, or uploaded; the manifest is written last.
func (r *Repo) BackupPartition(ctx context.Context, p *recovery.Partition) *Result {
	s, o := r.store, r.opts
	began := o.Now()
	res := &Result{Partition: int(p.Index)}
	res.Err = func() error {
		lock, err := AcquireLock(ctx, s, LockKey(p.FlowUID, int(p.Index)), o.Holder, o.LockTTL, o.Now)
		if err != nil {
			return err
		}
		if o.ObjectLock != nil {
			lock.keepOnRelease()
		}
		defer lock.Release(context.WithoutCancel(ctx))
		if err := checkNoPrune(ctx, s, o.Now()); err != nil {
			return err
		}
		lctx, stop := lock.KeepAlive(ctx)
		defer stop()
		prev, err := r.latest(lctx, p.FlowUID, int(p.Index))
		if err != nil {
			return lockCause(lctx, err)
		}
		if prev != nil && prev.Signer() != "" && o.SigningKey == nil {
			return fmt.Errorf("%w: the latest backup of partition %d in %s is signed (key %s): give --signing-key", ErrSigningMismatch, p.Index, s, prev.Signer())
		}
		if l, _, err := recovery.ReadLineage(lctx, p.DB); err == nil {
			res.Fork = forkFromLatest(l, prev)
		}
		lk, err := newLocker(s, o.ObjectLock, began, o.Now)
		if err != nil {
			return err
		}
		// A backup asked to carry a tag the latest one lacks is taken even
		// if nothing changed: the tag is what was asked for.
		tagged := !slices.ContainsFunc(o.Tags, func(t string) bool { return prev == nil || !slices.Contains(prev.Tags, t) })
		if o.SkipUnchanged && prev != nil && len(r.quarantined) == 0 && tagged {
			same, err := unchangedSince(lctx, p, prev)
			if err == nil && same && lk != nil {
				// An idle partition's newest backup stays under lock: once
				// its lock runs low, back it up again.
				low, lerr := lk.runsLow(lctx, prev)
				same, err = !low, lerr
			}
			if err != nil {
				return err
			} else if same {
				res.Manifest, res.Skipped = prev, SkipUnchanged
				// Nothing to upload: say, for verify's RPO, that the latest
				// backup is current as of now.
				return writeHeartbeat(lctx, s, prev, o.SigningKey, r.cipher.Auth(), o.Now())
			}
		}
		xfer := Transfer{Also: o.Progress}
		m, kind, err := r.capture(lctx, p, prev, &xfer, res, lk)
		res.ObjectsUploaded, res.ObjectsSkipped = xfer.ObjectsUploaded.Load(), xfer.ObjectsSkipped.Load()
		res.ObjectsHealed = xfer.ObjectsHealed.Load()
		res.BytesUploaded, res.BytesRead = xfer.BytesUploaded.Load(), xfer.BytesRead.Load()
		if err != nil {
			return lockCause(lctx, err)
		}
		if err := lock.Check(lctx); err != nil {
			return err
		}
		data, err := m.SealWith(r.cipher, o.SigningKey)
		if err != nil {
			return err
		}
		if lk != nil {
			err = lk.put(lctx, ManifestKey(m.Flow.UID, m.Partition.Index, m.ID), data)
		} else {
			err = s.Put(lctx, ManifestKey(m.Flow.UID, m.Partition.Index, m.ID), data)
		}
		if err != nil {
			return lockCause(lctx, fmt.Errorf("write manifest: %w", err))
		}
		if err := s.Put(lctx, LatestKey(m.Flow.UID, m.Partition.Index), data); err != nil {
			return lockCause(lctx, fmt.Errorf("write latest pointer: %w", err))
		}
		res.Manifest, res.Kind = m, kind
		// Chunks verify had quarantined that this backup stored again are
		// whole once more.
		for _, ob := range m.Objects() {
			if r.quarantined[ob.SHA256] && xfer.stored(ob.SHA256) {
				if err := s.Delete(lctx, QuarantineKey(ob.SHA256)); err != nil {
					return fmt.Errorf("clear quarantine of healed chunk %s: %w", ob.SHA256[:12], err)
				}
			}
		}
		return nil
	}()
	if res.Err != nil {
		res.Err = fmt.Errorf("back up partition %d: %w", p.Index, res.Err)
	}
	res.Duration = o.Now().Sub(began)
	return res
}

// lockCause returns the lock's loss instead of err when the work stopped
// because the lock was lost.
func lockCause(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrLockLost) {
		return cause
	}
	return err
}

// capture reads the partition under one read transaction and uploads a base
// image or a delta over prev's base. Either is staged in a local file
// first, so the read transaction (which keeps SQLite's checkpoints from
// passing it: the WAL grows while it lasts) ends when the local copy does,
// not when the upload does.
func (r *Repo) capture(ctx context.Context, p *recovery.Partition, prev *Manifest, xfer *Transfer, res *Result, lk *locker) (*Manifest, string, error) {
	s, o := r.store, r.opts
	conn, err := p.DB.Conn(ctx)
	if err != nil {
		return nil, "", err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		return nil, "", err
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
	v, err := recovery.ReadView(ctx, conn)
	if err != nil {
		return nil, "", fmt.Errorf("read partition: %w", err)
	}
	if v.Pending {
		return nil, "", fmt.Errorf("partition %d was restored and has not run since: nothing to back up", v.Index)
	}
	now := o.Now()
	host := machine.Host()
	lineage := v.Lineage
	m := &Manifest{
		Format:    ManifestFormat,
		ID:        NewBackupID(now),
		Created:   now.UTC(),
		Flow:      FlowRef{UID: v.FlowUID, Name: v.FlowName},
		Partition: PartitionRef{Index: int(v.Index), Count: int(v.Count)},
		Epochs:    EpochRange{Lo: uint64(v.Lo()), Hi: uint64(v.Hi())},
		Execution: -1,
		Intervals: Intervals{SnapshotMs: v.Intervals.Snapshot.Milliseconds(), BackupMs: v.Intervals.Backup.Milliseconds()},
		Agent:     AgentInfo{Version: Version(), Host: host},
		Lineage:   &lineage,
		Runs:      v.Runs,
		Tags:      slices.Clone(o.Tags),
	}
	if c := r.cipher; c != nil {
		m.Encryption = &EncryptionInfo{Scheme: SchemeAge, Key: c.KeyID(), Recipients: c.Recipients()}
		m.cipher = c
	}
	var exStarted int64
	if ex := v.Last(); ex != nil {
		m.Execution = int64(ex.Number)
		exStarted = ex.Started.UnixMilli()
	}
	if m.Epochs.LoTime, err = recovery.EpochTime(ctx, conn, v.Lo()); err != nil {
		return nil, "", err
	}
	if m.Epochs.HiTime, err = recovery.EpochTime(ctx, conn, v.Hi()); err != nil {
		return nil, "", err
	}
	up := &uploader{store: s, workers: o.Workers, xfer: xfer, known: map[string]Object{}, quarantined: r.quarantined, budget: o.Memory, cipher: r.cipher, lock: lk}
	if prev != nil {
		for _, ob := range prev.Objects() {
			if !r.quarantined[ob.SHA256] {
				up.known[ob.SHA256] = ob
			}
		}
	}
	schema, err := recovery.SchemaOf(ctx, conn)
	if err != nil {
		return nil, "", err
	}
	w, ok := deltaWatermark(prev, v, now, o.BaseMaxAge)
	if ok {
		// A base that holds another history beyond where it parted from
		// this one (another lineage, or this one's files rolled back and
		// run again) would mix the two under a delta.
		if up := recovery.Agree(recovery.History{Lineage: v.Lineage, Runs: v.Runs}, prev.History()); uint64(up) < prev.Base.Hi {
			ok = false
			res.BaseNote = fmt.Sprintf("the latest backup (lineage %s) is another history beyond epoch %d", recovery.ShortID(prev.LineageOf().ID), up)
		}
	}
	if ok && (schema != recovery.SchemaVersion || prev.Base.SchemaVersion() != recovery.SchemaVersion) {
		// Deltas are between images of this schema only; a partition or a
		// base of an older one (run flowrun once to migrate) gets a base.
		ok = false
		res.BaseNote = fmt.Sprintf("the partition (schema %d) or its last base (schema %d) predates schema %d", schema, prev.Base.SchemaVersion(), recovery.SchemaVersion)
	}
	if ok {
		// A delta names its base's chunks: trust the store, not the last
		// manifest. Anything missing, resized or quarantined means a new base.
		if note, err := confirmAll(ctx, s, prev.Base.Chunks, r.quarantined, o.Workers, lk); err != nil {
			return nil, "", err
		} else if note != "" {
			ok = false
			res.BaseNote = note
		}
	}
	if ok {
		rows, err := recovery.ChangesSince(ctx, conn, recovery.Epoch(w))
		if err != nil {
			return nil, "", err
		}
		if rows*2 <= prev.Base.Rows {
			path, err := tempPath(o.TempDir, deltaPattern())
			if err != nil {
				return nil, "", err
			}
			defer os.Remove(path)
			n, err := recovery.WriteDelta(ctx, conn, recovery.Epoch(w), path)
			if err != nil {
				return nil, "", fmt.Errorf("build delta: %w", err)
			}
			// The delta file is a snapshot: release the read transaction now.
			conn.ExecContext(ctx, "ROLLBACK")
			built, err := o.Memory.Build(ctx)
			if err != nil {
				return nil, "", err
			}
			defer built()
			f, err := os.Open(path)
			if err != nil {
				return nil, "", err
			}
			defer f.Close()
			objs, size, sum, err := up.upload(ctx, f)
			if err != nil {
				return nil, "", err
			}
			m.Base = prev.Base
			m.Delta = &Delta{Watermark: w, Size: size, SHA256: sum, Chunks: objs, Rows: n, Schema: schema}
			return m, "delta", m.Validate()
		}
	}
	var pageSize int
	if err := conn.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&pageSize); err != nil {
		return nil, "", err
	}
	var rows int64
	if schema == recovery.SchemaVersion {
		if rows, err = recovery.ChangesSince(ctx, conn, 0); err != nil {
			return nil, "", err
		}
	}
	var pageCount int64
	if err := conn.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pageCount); err != nil {
		return nil, "", err
	}
	// One upload builds chunks at a time per share of the budget (see
	// Budget.Build): the pages are read when it is this one's turn.
	built, err := o.Memory.Build(ctx)
	if err != nil {
		return nil, "", err
	}
	defer built()
	var pr io.ReadCloser
	if fr, err := newFilePageReader(ctx, conn, p.Path, pageSize, pageCount); err != nil {
		return nil, "", err
	} else if fr != nil {
		pr = fr
	} else if pr, err = newPageReader(ctx, conn); err != nil {
		return nil, "", err
	}
	defer pr.Close()
	src := io.Reader(pr)
	if note := stageRoom(o.TempDir, pageCount*int64(pageSize)); note != "" {
		res.CaptureNote = note
	} else {
		// The pages are read as fast as the disk gives them, and the read
		// transaction ends when they all are: what the upload has not
		// taken yet waits in memory, then in a local file, and no longer
		// holds back the WAL.
		sctx, cancel := context.WithCancel(ctx)
		sp := newSpool(sctx, o.TempDir, basePattern(), o.Memory, pr, func() {
			pr.Close()
			conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		})
		defer func() { cancel(); sp.Close() }()
		src = sp
	}
	objs, size, sum, err := up.upload(ctx, src)
	if err != nil {
		return nil, "", err
	}
	m.Base = Image{ID: m.ID, Captured: now.UTC(), PageSize: pageSize, Size: size, SHA256: sum, Chunks: objs,
		Hi: m.Epochs.Hi, Execution: m.Execution, ExecutionStarted: exStarted, Rows: rows, Schema: schema}
	return m, "base", m.Validate()
}

// deltaWatermark decides whether a delta over prev's base can describe the
// partition as v shows it, and from which epoch: rows below the watermark
// have not changed since the base except by GC. That holds when the base is
// young enough for GC's record of dropped keys and the partition's execution
// history extends the base's; the watermark is then the base's frontier,
// lowered to the resume epoch of every later execution (each deleted the rows
// at or after its resume epoch).
func deltaWatermark(prev *Manifest, v *recovery.View, now time.Time, maxAge time.Duration) (uint64, bool) {
	if prev == nil || prev.Flow.UID != v.FlowUID || prev.Partition.Index != int(v.Index) || now.Sub(prev.Base.Captured) > maxAge {
		return 0, false
	}
	w := prev.Base.Hi
	continued := prev.Base.Execution < 0
	for _, ex := range v.Executions {
		if int64(ex.Number) == prev.Base.Execution && ex.Started.UnixMilli() == prev.Base.ExecutionStarted {
			continued = true
		}
		if int64(ex.Number) > prev.Base.Execution {
			w = min(w, uint64(ex.ResumeEpoch))
		}
	}
	return w, continued && w >= 1
}

// unchangedSince says whether p's restorable range and execution are still
// those prev recorded: nothing a new backup would add.
func unchangedSince(ctx context.Context, p *recovery.Partition, prev *Manifest) (bool, error) {
	v, err := recovery.ReadView(ctx, p.DB)
	if err != nil {
		return false, fmt.Errorf("read partition: %w", err)
	}
	ex := int64(-1)
	if last := v.Last(); last != nil {
		ex = int64(last.Number)
	}
	return v.Lineage.ID == prev.LineageOf().ID && sameLastRun(v.Runs, prev.Runs) && uint64(v.Lo()) == prev.Epochs.Lo && uint64(v.Hi()) == prev.Epochs.Hi && ex == prev.Execution, nil
}

// sameLastRun says whether two run lists end with the same run.
func sameLastRun(a, b []recovery.Run) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	return a[len(a)-1] == b[len(b)-1]
}
