package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flowkeep/flowkeep/internal/machine"
)

// Copies (flowbackup copy, the agent's --copy-to): Copy brings the backups
// of one location (A) into another (B) as they are stored, byte for byte,
// so it needs no key: encrypted backups stay sealed, and the signatures
// and index tags of signed or encrypted ones hold in B as they did in A
// (they name the flow, not the location). Any two backends: the layout is
// the same on every one.
//
// B is consistent at every moment, because objects land in the order a
// backup writes them:
//
//  1. the location's config (config.json), when B has none and A's
//     scheme (encrypted, signed) needs one. It goes first, not last: a
//     config says which writers may join the location, and B must refuse
//     a writer of the other scheme before the first copied object lands;
//     an interrupted copy leaves an empty location of A's scheme;
//  2. per backup, oldest first: every chunk it names that B lacks, then,
//     once each of them is known to be in B (listed there under B's lock,
//     or written by this copy), its manifest;
//  3. each partition's latest pointer, once the backup it names is in B;
//     and its heartbeat (what verify --max-age counts for an idle flow),
//     likewise;
//  4. the lineage registry's events.
//
// Incremental, with few requests: one LIST of A's manifests and one of
// B's decide which backups to copy (a manifest B holds under the same key
// with the same size is the same backup: manifest keys are unique and
// never rewritten); only those are read. One LIST of B's chunks then
// gives the names and sizes of the chunks B holds: a chunk's name is the
// sha256 of its content (in an encrypted location the HMAC of it under
// the chunk key), so a chunk B holds under that name with the stored size
// the manifest gives is the same chunk. Checksum makes the copy also read
// what B holds and compare the bytes (see CopyOptions.Checksum).
//
// What is read from A is checked before it is written to B: a manifest
// against its own seal, a plaintext chunk against the stored bytes'
// sha256 its manifest records (or, without one, its content against its
// name), an encrypted chunk against its stored size and age header (its
// content cannot be checked without the chunk key). A chunk that arrives
// damaged is read again; one damaged in A, missing there (a prune in A
// removed it during the copy), or quarantined there by verify keeps the
// backups naming it out of B (NotCopied).
//
// Locks: A is read without locks (a backup or prune may run there; what
// it changes meanwhile is at worst not copied this time). In B the copy
// writes as a backup does: under the partition lock of every partition it
// writes to, having checked that no prune runs there, so a prune in B
// (which refuses to start while a partition lock is held) can never
// delete a chunk the copy found in B and a manifest it publishes names.
// A partition whose lock another writer holds is left for the next copy
// (NotCopiedLocked).
//
// Not copied, and said so: manifests that cannot be read or are invalid
// (NotCopiedBroken), and strays (NotCopiedStray): manifests no reader
// would believe, which B's readers would only set apart as A's do, and
// which no prune deletes. Without keys the copy knows a plaintext backup
// in an encrypted location and an unsigned one in a signed location for
// strays; given Trusted (and Auth), also those signed by another key (or
// whose index is not tagged for a known recipient). Locks, quarantine
// markers and heartbeats of backups B does not hold are never copied.

// CopyOptions configure Copy. Zero values take the defaults.
type CopyOptions struct {
	// FlowUID, if set, copies only this flow's backups (and registry).
	FlowUID string
	// Partitions, if set (with FlowUID), copies only these partitions.
	Partitions []int
	// Workers moves this many chunks at once (DefaultWorkers); Parallel
	// copies this many partitions at once (DefaultParallel).
	Workers  int
	Parallel int
	// Memory bounds the chunk bytes in memory at once (a budget of
	// DefaultMemory).
	Memory *Budget
	// LockTTL is how long B's partition locks last if the copy dies
	// holding them (DefaultLockTTL).
	LockTTL time.Duration
	// Holder names this copy in B's locks (default "copy" and the
	// machine, pid and a random part).
	Holder string
	Now    func() time.Time
	// Checksum also reads every object B already holds that the copy
	// would otherwise skip (the manifests of the backups in scope and the
	// chunks they name) and compares it with A's: a
	// chunk by its stored bytes' sha256 where the manifest records it (or
	// its content against its name; an encrypted one against A's bytes),
	// a manifest byte for byte. What differs is copied again (healed).
	// It reads every backup in scope from A and from B.
	Checksum bool
	// Trusted and Auth, if set, also leave out backups signed by another
	// key, or whose encrypted index is not tagged for a known recipient
	// (see ReadPolicy).
	Trusted *TrustedKeys
	Auth    *IndexAuth
	// Progress, if set, counts the copy's work as it goes.
	Progress *CopyProgress
}

// CopyProgress counts a copy's work as it goes (a progress display).
type CopyProgress struct {
	// BytesTotal is the stored size of the chunks to copy, once known;
	// BytesDone and Objects what was written so far.
	BytesTotal, BytesDone, Objects atomic.Int64
}

func (p *CopyProgress) wrote(n int64) {
	if p != nil {
		p.BytesDone.Add(n)
		p.Objects.Add(1)
	}
}

// Why a backup was not copied.
const (
	NotCopiedBroken  = "broken"  // A's manifest could not be read, or is invalid
	NotCopiedStray   = "stray"   // a manifest no reader believes (see Stray)
	NotCopiedMissing = "missing" // a chunk it names is missing, damaged or quarantined in A
	NotCopiedLocked  = "locked"  // B's partition lock is held by another writer: copied next time
)

// NotCopied is a backup of A that Copy left out of B, and why (Partition
// is -1 for an object under manifests/ that names no backup).
type NotCopied struct {
	Key       string    `json:"key"`
	Flow      string    `json:"flow,omitempty"`
	Partition int       `json:"partition"`
	Backup    string    `json:"backup,omitempty"`
	Created   time.Time `json:"created,omitzero"`
	Kind      string    `json:"kind"`
	Reason    string    `json:"reason"`
}

// CopyResult reports a copy. Objects are every object written to B or
// found there: chunks, manifests, latest pointers, heartbeats, registry
// events and the config.
type CopyResult struct {
	From string `json:"from"`
	To   string `json:"to"`
	// CopiedObjects and CopiedBytes are what was written to B (0 and 0
	// when B already held everything); CopiedBackups the manifests among
	// them, CopiedChunks the chunks.
	CopiedObjects int64 `json:"copied_objects"`
	CopiedBytes   int64 `json:"copied_bytes"`
	CopiedBackups int   `json:"copied_backups"`
	CopiedChunks  int64 `json:"copied_chunks"`
	// SkippedObjects and SkippedBytes are what B already held: the
	// manifests of the backups in scope (whose chunks are then not looked
	// at again), the chunks of the backups copied that B held, current
	// pointers and heartbeats, and registry events. SkippedBackups counts
	// the manifests among them.
	SkippedObjects int64 `json:"skipped_objects"`
	SkippedBytes   int64 `json:"skipped_bytes"`
	SkippedBackups int   `json:"skipped_backups"`
	// HealedChunks were in B but quarantined there by verify, of another
	// stored size, or (with Checksum) of other bytes: written again.
	HealedChunks int64 `json:"healed_chunks"`
	// ConfigCreated says B got its config.json from this copy.
	ConfigCreated bool `json:"config_created"`
	// NotCopied are the backups of A left out, and why.
	NotCopied []NotCopied `json:"not_copied"`
	// Behind is when the oldest backup in scope that B should hold and
	// does not was taken (NotCopiedLocked); zero when there is none.
	Behind time.Time `json:"behind,omitzero"`
}

func (r *CopyResult) notCopied(n NotCopied) {
	if n.Created.IsZero() && n.Backup != "" {
		n.Created, _ = BackupIDTime(n.Backup)
	}
	r.NotCopied = append(r.NotCopied, n)
	if n.Kind == NotCopiedLocked && (r.Behind.IsZero() || n.Created.Before(r.Behind)) {
		r.Behind = n.Created
	}
}

// ErrSameLocation says a copy was asked to copy a location onto itself.
var ErrSameLocation = errors.New("copy from and to the same location")

// Copy copies the backups of from that to lacks (see the comment above),
// and returns what it did. Backups it leaves out are in the result's
// NotCopied; an error is returned for what stops the copy (a location it
// cannot read or write, a scheme mismatch: ErrEncryptionMismatch or
// ErrSigningMismatch, a prune running in to: ErrLocked), with the result
// of what was done until then.
func Copy(ctx context.Context, from, to Store, o CopyOptions) (*CopyResult, error) {
	if from.String() == to.String() {
		return nil, fmt.Errorf("%w: %s", ErrSameLocation, from)
	}
	if len(o.Partitions) > 0 && o.FlowUID == "" {
		return nil, fmt.Errorf("copy of partitions %v: name their flow", o.Partitions)
	}
	if o.LockTTL < 0 || o.LockTTL > 0 && o.LockTTL < MinLockTTL || o.LockTTL > MaxLockTTL {
		return nil, fmt.Errorf("lock TTL %v is out of range: %v to %v", o.LockTTL, MinLockTTL, MaxLockTTL)
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.Parallel <= 0 {
		o.Parallel = DefaultParallel
	}
	if o.Memory == nil {
		o.Memory = NewBudget(DefaultMemory)
	}
	if o.LockTTL == 0 {
		o.LockTTL = DefaultLockTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Holder == "" {
		var r [4]byte
		rand.Read(r[:])
		o.Holder = fmt.Sprintf("copy %s/%d/%s", machine.ID(), os.Getpid(), hex.EncodeToString(r[:]))
	}
	c := &copier{from: from, to: to, o: o, res: &CopyResult{From: from.String(), To: to.String(), NotCopied: []NotCopied{}},
		chunks: map[string]*copyChunk{}, inB: map[string]bool{}}
	err := c.run(ctx)
	sort.Slice(c.res.NotCopied, func(i, j int) bool { return c.res.NotCopied[i].Key < c.res.NotCopied[j].Key })
	return c.res, err
}

type copier struct {
	from, to Store
	o        CopyOptions
	res      *CopyResult
	mu       sync.Mutex // guards res's counters, inB and chunks once the writes begin
	loc      LocationInfo
	parts    map[int]bool // o.Partitions as a set (nil: all)

	items    []*copyItem           // backups to copy, by flow, partition, id
	chunks   map[string]*copyChunk // the chunks they name, by name
	inB      map[string]bool       // manifest keys B holds (listed, or written by this copy)
	pointers []*copyPointer
	beats    []*copyPointer
}

// copyItem is one backup to copy (or, with Checksum, one B holds whose
// chunks are checked: checkOnly).
type copyItem struct {
	ref       ManifestRef
	data      []byte
	m         *Manifest
	checkOnly bool
}

// copyPointer is a latest pointer or heartbeat of A to bring into B.
type copyPointer struct {
	key     string
	uid     string
	idx     int
	backup  string    // the backup it names
	checked time.Time // a heartbeat's time
	data    []byte
}

// copyChunk is one chunk the copied backups name.
type copyChunk struct {
	name      string
	stored    int64
	sums      map[string]bool // stored-bytes sha256s the manifests record
	encrypted bool
	missing   string // why A cannot give it ("" if it can)
	inB       bool   // B holds it, whole (known under B's lock)
	heal      bool   // B holds it, but it must be written again

	once sync.Once
	err  error // why it could not be copied (ErrCorrupt: A's fault) or nil
}

func (c *copier) run(ctx context.Context) error {
	if c.o.Partitions != nil {
		c.parts = map[int]bool{}
		for _, p := range c.o.Partitions {
			c.parts[p] = true
		}
	}
	empty, err := c.scheme(ctx)
	if err != nil || empty {
		return err
	}
	if err := c.plan(ctx); err != nil {
		return err
	}
	if err := c.write(ctx); err != nil {
		return err
	}
	return c.registry(ctx)
}

// inScope says whether partition idx of flow uid is copied.
func (c *copier) inScope(uid string, idx int) bool {
	return (c.o.FlowUID == "" || uid == c.o.FlowUID) && (c.parts == nil || c.parts[idx])
}

// scopePrefix is prefix narrowed to the flow copied.
func (c *copier) scopePrefix(prefix string) string {
	if c.o.FlowUID == "" {
		return prefix
	}
	return prefix + c.o.FlowUID + "/"
}

// Scheme is a location's encryption and signing, as a copy compares them.
type Scheme struct {
	Encrypted, Signed bool
	// Known says the location holds backups or a config that say so
	// (false for an empty location without a config).
	Known bool
}

func (s Scheme) String() string {
	var parts []string
	if s.Encrypted {
		parts = append(parts, "encrypted")
	} else {
		parts = append(parts, "plaintext")
	}
	if s.Signed {
		parts = append(parts, "signed")
	} else {
		parts = append(parts, "unsigned")
	}
	return strings.Join(parts, ", ")
}

// LocationScheme reads a location's scheme from its config, or without
// one from its first manifest (a location without a config holds no
// signed backups: signing always writes one).
func LocationScheme(ctx context.Context, s Store) (Scheme, *RepoConfig, error) {
	cfg, _, err := readConfigOrNone(ctx, s)
	if err != nil {
		return Scheme{}, nil, err
	}
	if cfg != nil {
		return Scheme{Encrypted: cfg.Encryption == SchemeAge, Signed: cfg.Signed, Known: true}, cfg, nil
	}
	enc, _, err := locationScheme(ctx, s, true)
	if err != nil {
		return Scheme{}, nil, err
	}
	return Scheme{Encrypted: enc == SchemeAge, Known: enc != ""}, nil, nil
}

// CheckCopyScheme refuses a copy of backups of scheme a into to when to's
// config, or its backups, say another (ErrEncryptionMismatch,
// ErrSigningMismatch): readers of to would take the copied backups, or
// its own, for strays. It writes nothing.
func CheckCopyScheme(ctx context.Context, to Store, a Scheme) error {
	b, _, err := LocationScheme(ctx, to)
	if err != nil {
		return err
	}
	return compareSchemes(to, a, b)
}

func compareSchemes(to Store, a, b Scheme) error {
	if !b.Known {
		return nil
	}
	if a.Encrypted != b.Encrypted {
		return fmt.Errorf("%w: the backups copied are %s and those in %s are %s: one location never holds both; copy to another prefix",
			ErrEncryptionMismatch, map[bool]string{true: "encrypted", false: "plaintext"}[a.Encrypted], to, map[bool]string{true: "encrypted", false: "plaintext"}[b.Encrypted])
	}
	if a.Signed != b.Signed {
		if a.Signed {
			return fmt.Errorf("%w: the backups copied are signed and %s holds unsigned ones (readers of a signed location take unsigned backups for strays); copy to another prefix", ErrSigningMismatch, to)
		}
		return fmt.Errorf("%w: %s holds signed backups and the ones copied are unsigned (its readers would take them for strays); copy to another prefix", ErrSigningMismatch, to)
	}
	return nil
}

// scheme compares the two locations' schemes and gives B A's config if it
// has none (see the comment above). empty says A holds nothing to copy.
func (c *copier) scheme(ctx context.Context) (bool, error) {
	a, cfgA, err := LocationScheme(ctx, c.from)
	if err != nil {
		return false, fmt.Errorf("read the scheme of %s: %w", c.from, err)
	}
	if !a.Known {
		return true, nil // no config, no manifests: nothing to copy
	}
	b, cfgB, err := LocationScheme(ctx, c.to)
	if err != nil {
		return false, fmt.Errorf("read the scheme of %s: %w", c.to, err)
	}
	if err := compareSchemes(c.to, a, b); err != nil {
		return false, err
	}
	c.loc = LocationInfo{Encrypted: a.Encrypted, Signed: a.Signed, Trusted: c.o.Trusted != nil}
	if cfgB != nil || !a.Encrypted && !a.Signed {
		if cfgB != nil {
			c.skipped(1, 0)
		}
		return false, nil // a plaintext, unsigned location has no config
	}
	var data []byte
	if cfgA != nil {
		if data, err = ReadAll(ctx, c.from, ConfigKey, 1<<16); err != nil {
			return false, fmt.Errorf("read %s of %s: %w", ConfigKey, c.from, err)
		}
	} else {
		// A location encrypted before configs existed: B gets the config
		// A would have.
		enc := SchemeNone
		if a.Encrypted {
			enc = SchemeAge
		}
		data, _ = json.Marshal(RepoConfig{Format: repoFormat, Encryption: enc, Created: c.o.Now().UTC(), Signed: a.Signed})
	}
	switch err := c.to.PutIfAbsent(ctx, ConfigKey, data); {
	case errors.Is(err, ErrExists):
		// Another writer configured B meanwhile: it must agree.
		return false, CheckCopyScheme(ctx, c.to, a)
	case err != nil:
		return false, fmt.Errorf("write %s to %s: %w", ConfigKey, c.to, err)
	}
	c.res.ConfigCreated = true
	c.copied(int64(len(data)))
	return false, nil
}

func (c *copier) copied(n int64) {
	c.mu.Lock()
	c.res.CopiedObjects++
	c.res.CopiedBytes += n
	c.mu.Unlock()
	c.o.Progress.wrote(n)
}

func (c *copier) skipped(objects, n int64) {
	c.mu.Lock()
	c.res.SkippedObjects += objects
	c.res.SkippedBytes += n
	c.mu.Unlock()
}

// plan lists both locations and reads what the copy needs from A: the
// backups B lacks, their chunks' presence in A, the latest pointers and
// heartbeats B lacks.
func (c *copier) plan(ctx context.Context) error {
	type listed struct {
		ref  ManifestRef
		size int64
	}
	var refs []listed
	err := c.from.List(ctx, c.scopePrefix(ManifestsPrefix), "", func(oi ObjectInfo) error {
		r, ok := ParseManifestKey(oi.Key)
		switch {
		case !ok:
			c.res.notCopied(NotCopied{Key: oi.Key, Partition: -1, Kind: NotCopiedBroken, Reason: "not a manifest key"})
		case c.inScope(r.FlowUID, r.Index):
			refs = append(refs, listed{r, oi.Size})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list manifests in %s: %w", c.from, err)
	}
	held := map[string]int64{}
	err = c.to.List(ctx, c.scopePrefix(ManifestsPrefix), "", func(oi ObjectInfo) error {
		held[oi.Key] = oi.Size
		return nil
	})
	if err != nil {
		return fmt.Errorf("list manifests in %s: %w", c.to, err)
	}
	var read []ManifestRef
	for _, l := range refs {
		if n, ok := held[l.ref.Key]; ok && n == l.size {
			c.inB[l.ref.Key] = true
			if !c.o.Checksum {
				c.res.SkippedBackups++
				c.skipped(1, n)
				continue
			}
		}
		read = append(read, l.ref)
	}
	items, err := c.readManifests(ctx, read)
	if err != nil {
		return err
	}
	c.items = items
	if err := c.chunksInA(ctx); err != nil {
		return err
	}
	if c.pointers, err = c.planPointers(ctx, LatestPrefix); err != nil {
		return err
	}
	c.beats, err = c.planPointers(ctx, HeartbeatsPrefix)
	return err
}

// readManifests reads the manifests refs name from A (several at once,
// within CatalogMemory), keeping the believable ones B lacks.
func (c *copier) readManifests(ctx context.Context, refs []ManifestRef) ([]*copyItem, error) {
	type got struct {
		data []byte
		m    *Manifest
		err  error
		same bool // with Checksum: B's copy has the same bytes
	}
	out := make([]got, len(refs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(DefaultCatalogWorkers)
	budget := NewBudget(CatalogMemory)
	for i, r := range refs {
		release, err := budget.Acquire(gctx, 2<<20)
		if err != nil {
			break
		}
		g.Go(func() error {
			defer release()
			b, m, err := readManifestBytes(gctx, c.from, r)
			if err == nil && c.o.Checksum && c.inB[r.Key] {
				theirs, berr := ReadAll(gctx, c.to, r.Key, MaxManifestBytes)
				switch {
				case berr == nil:
					out[i].same = bytes.Equal(theirs, b)
				case !errors.Is(berr, ErrNotFound) && !errors.Is(berr, ErrCorrupt):
					return fmt.Errorf("read %s from %s: %w", r.Key, c.to, berr)
				}
			}
			out[i] = got{data: b, m: m, err: err, same: out[i].same}
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("read %s from %s: %w", r.Key, c.from, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var items []*copyItem
	for i, r := range refs {
		g := out[i]
		base := NotCopied{Key: r.Key, Flow: r.FlowUID, Partition: r.Index, Backup: r.ID}
		switch {
		case errors.Is(g.err, ErrNotFound):
			delete(c.inB, r.Key) // removed from A meanwhile (a prune there)
			continue
		case g.err != nil:
			base.Kind, base.Reason = NotCopiedBroken, g.err.Error()
			c.res.notCopied(base)
			continue
		}
		if why := c.strayReason(g.m); why != "" {
			base.Kind, base.Reason = NotCopiedStray, why
			c.res.notCopied(base)
			continue
		}
		if g.same {
			c.res.SkippedBackups++
			c.skipped(1, int64(len(g.data)))
			items = append(items, &copyItem{ref: r, data: g.data, m: g.m, checkOnly: true})
			continue
		}
		delete(c.inB, r.Key) // to be written (again)
		items = append(items, &copyItem{ref: r, data: g.data, m: g.m})
	}
	sort.Slice(items, func(i, j int) bool {
		a, b := items[i].ref, items[j].ref
		if a.FlowUID != b.FlowUID {
			return a.FlowUID < b.FlowUID
		}
		if a.Index != b.Index {
			return a.Index < b.Index
		}
		return a.ID < b.ID
	})
	return items, nil
}

// readManifestBytes reads a manifest's stored bytes and what they parse
// into (Locked if encrypted), checked against its key. Bytes that do not
// parse are read again before they are called corrupt (see readParsed).
func readManifestBytes(ctx context.Context, s Store, r ManifestRef) ([]byte, *Manifest, error) {
	type parsed struct {
		b []byte
		m *Manifest
	}
	p, err := readParsed(ctx, s, r.Key, MaxManifestBytes, func(b []byte) (parsed, error) {
		m, err := ParseManifest(b)
		return parsed{b, m}, err
	})
	if err != nil {
		return nil, nil, err
	}
	if m := p.m; m.Flow.UID != r.FlowUID || m.Partition.Index != r.Index || m.ID != r.ID {
		return nil, nil, fmt.Errorf("%w: manifest %s says flow %s partition %d id %s", ErrCorrupt, r.Key, m.Flow.UID, m.Partition.Index, m.ID)
	}
	return p.b, p.m, nil
}

// strayReason says why no reader of A (or B) would believe m ("" if one
// might).
func (c *copier) strayReason(m *Manifest) string {
	if c.loc.Signed && m.Signer() == "" {
		return "not signed, in a location of signed backups: never restored, so not copied"
	}
	return strayReason(m, c.loc, c.o.Trusted, c.o.Auth)
}

// chunksInA collects the chunks of the backups to copy and checks, with
// one LIST of A's chunks and one of its quarantine, that A can give them;
// a backup naming one it cannot is left out.
func (c *copier) chunksInA(ctx context.Context) error {
	if len(c.items) == 0 {
		return nil
	}
	for _, it := range c.items {
		for _, ob := range it.m.Objects() {
			ch := c.chunks[ob.SHA256]
			if ch == nil {
				ch = &copyChunk{name: ob.SHA256, stored: ob.Stored, sums: map[string]bool{}, encrypted: it.m.Encryption != nil, missing: "missing in " + c.from.String()}
				c.chunks[ob.SHA256] = ch
			}
			if ob.StoredSHA256 != "" {
				ch.sums[ob.StoredSHA256] = true
			}
		}
	}
	quarantined, err := LoadQuarantine(ctx, c.from)
	if err != nil {
		return fmt.Errorf("%s: %w", c.from, err)
	}
	err = c.from.List(ctx, ChunksPrefix, "", func(oi ObjectInfo) error {
		ch := c.chunks[oi.Key[len(oi.Key)-min(64, len(oi.Key)):]]
		switch {
		case ch == nil || ChunkKey(ch.name) != oi.Key:
		case quarantined[ch.name]:
			ch.missing = "quarantined in " + c.from.String() + " by verify --deep (damaged there; its next backup heals it)"
		case oi.Size != ch.stored:
			ch.missing = fmt.Sprintf("%d bytes in %s, the manifest says %d", oi.Size, c.from, ch.stored)
		default:
			ch.missing = ""
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list chunks in %s: %w", c.from, err)
	}
	kept := c.items[:0]
	for _, it := range c.items {
		if why := c.unavailable(it); why != "" && it.checkOnly {
			continue // in B already; B's own chunks are still checked (not healed from A)
		} else if why != "" {
			c.res.notCopied(NotCopied{Key: it.ref.Key, Flow: it.ref.FlowUID, Partition: it.ref.Index, Backup: it.ref.ID, Kind: NotCopiedMissing, Reason: why})
			continue
		}
		kept = append(kept, it)
	}
	c.items = kept
	return nil
}

// unavailable says why A cannot give one of its chunks ("" if it can).
func (c *copier) unavailable(it *copyItem) string {
	for _, ob := range it.m.Objects() {
		if ch := c.chunks[ob.SHA256]; ch.missing != "" {
			return fmt.Sprintf("chunk %s is %s", ob.SHA256[:12], ch.missing)
		}
		if ch := c.chunks[ob.SHA256]; ch.stored != ob.Stored {
			return fmt.Sprintf("chunk %s: the manifest says %d bytes stored, another says %d", ob.SHA256[:12], ob.Stored, ch.stored)
		}
	}
	return ""
}

// planPointers reads A's latest pointers (prefix LatestPrefix) or
// heartbeats (HeartbeatsPrefix) of the partitions in scope and B's, and
// keeps those B should have: B has none, or an older one, or (a pointer
// of the same backup) other bytes.
func (c *copier) planPointers(ctx context.Context, prefix string) ([]*copyPointer, error) {
	var keys []string
	err := c.from.List(ctx, c.scopePrefix(prefix), "", func(oi ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s in %s: %w", prefix, c.from, err)
	}
	var out []*copyPointer
	for _, key := range keys {
		uid, idx, ok := parsePartKey(prefix, key)
		if !ok || !c.inScope(uid, idx) {
			continue
		}
		p, err := readPointer(ctx, c.from, prefix, key, uid, idx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.from, err)
		}
		if p == nil {
			continue // gone, or damaged: A's next backup rewrites it
		}
		theirs, err := readPointer(ctx, c.to, prefix, key, uid, idx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.to, err)
		}
		if !p.newerThan(theirs) {
			c.skipped(1, int64(len(p.data)))
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// newerThan says whether p should replace theirs (nil: B has none, or
// one that does not parse).
func (p *copyPointer) newerThan(theirs *copyPointer) bool {
	switch {
	case theirs == nil:
		return true
	case bytes.Equal(theirs.data, p.data):
		return false
	case !p.checked.IsZero() || !theirs.checked.IsZero():
		return p.checked.After(theirs.checked) // heartbeats: the later check
	}
	return p.backup >= theirs.backup // pointers: the newer backup (its own, whole)
}

// parsePartKey parses latest/<uid>/part-<iiii>.json or
// heartbeats/<uid>/part-<iiii>.json.
func parsePartKey(prefix, key string) (string, int, bool) {
	uid, rest, ok := strings.Cut(strings.TrimPrefix(key, prefix), "/")
	if !ok || !flowUIDRE.MatchString(uid) {
		return "", 0, false
	}
	idx, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rest, "part-"), ".json"))
	if err != nil || idx < 0 || idx >= MaxPartitions || prefix+partDir(uid, idx)+".json" != key {
		return "", 0, false
	}
	return uid, idx, true
}

// readPointer reads a latest pointer or heartbeat of partition idx of
// flow uid: nil if there is none, or it is damaged or names another
// partition.
func readPointer(ctx context.Context, s Store, prefix, key, uid string, idx int) (*copyPointer, error) {
	b, err := ReadAll(ctx, s, key, MaxManifestBytes)
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrCorrupt):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	p := &copyPointer{key: key, uid: uid, idx: idx, data: b}
	if prefix == HeartbeatsPrefix {
		var st storedHeartbeat
		var hb Heartbeat
		if decodeOne(b, &st) != nil || SumHex(st.Heartbeat) != st.SHA256 || decodeOne(st.Heartbeat, &hb) != nil || !backupIDRE.MatchString(hb.Backup) {
			return nil, nil
		}
		p.backup, p.checked = hb.Backup, hb.Checked
		return p, nil
	}
	m, err := ParseManifest(b)
	if err != nil || m.Flow.UID != uid || m.Partition.Index != idx {
		return nil, nil
	}
	p.backup = m.ID
	return p, nil
}

// partKey names a partition of a flow.
type partKey struct {
	uid string
	idx int
}

// write takes B's locks for every partition the copy writes to, then
// copies each partition's backups (chunks first, each manifest once its
// chunks are in B), pointer and heartbeat.
func (c *copier) write(ctx context.Context) error {
	byPart := map[partKey][]*copyItem{}
	for _, it := range c.items {
		k := partKey{it.ref.FlowUID, it.ref.Index}
		byPart[k] = append(byPart[k], it)
	}
	pointers, beats := map[partKey]*copyPointer{}, map[partKey]*copyPointer{}
	for _, p := range c.pointers {
		pointers[partKey{p.uid, p.idx}] = p
	}
	for _, p := range c.beats {
		beats[partKey{p.uid, p.idx}] = p
	}
	var parts []partKey
	for _, m := range []map[partKey]*copyPointer{pointers, beats} {
		for k := range m {
			if _, ok := byPart[k]; !ok {
				byPart[k] = nil
			}
		}
	}
	for k := range byPart {
		parts = append(parts, k)
	}
	if len(parts) == 0 {
		return nil
	}
	sort.Slice(parts, func(i, j int) bool {
		if parts[i].uid != parts[j].uid {
			return parts[i].uid < parts[j].uid
		}
		return parts[i].idx < parts[j].idx
	})
	locks := map[partKey]*Lock{}
	defer func() {
		for _, l := range locks {
			l.Release(context.WithoutCancel(ctx))
		}
	}()
	locked := parts[:0:0]
	for _, k := range parts {
		l, err := AcquireLock(ctx, c.to, LockKey(k.uid, k.idx), c.o.Holder, c.o.LockTTL, c.o.Now)
		switch {
		case errors.Is(err, ErrLocked):
			for _, it := range byPart[k] {
				c.res.notCopied(NotCopied{Key: it.ref.Key, Flow: k.uid, Partition: k.idx, Backup: it.ref.ID, Kind: NotCopiedLocked,
					Reason: fmt.Sprintf("partition %d's lock in %s is held: %v; the next copy brings it", k.idx, c.to, err)})
			}
			continue
		case err != nil:
			return fmt.Errorf("%s: %w", c.to, err)
		}
		locks[k] = l
		locked = append(locked, k)
	}
	if len(locked) == 0 {
		return nil
	}
	if err := checkNoPrune(ctx, c.to, c.o.Now()); err != nil {
		return fmt.Errorf("%s: %w", c.to, err)
	}
	// Renew every lock while the copy works; losing any stops it.
	lctx := ctx
	for _, k := range locked {
		var stop func()
		lctx, stop = locks[k].KeepAlive(lctx)
		defer stop()
	}
	if err := c.chunksInB(lctx); err != nil {
		return lockCause(lctx, err)
	}
	g, gctx := errgroup.WithContext(lctx)
	g.SetLimit(c.o.Parallel)
	sem := make(chan struct{}, c.o.Workers)
	for _, k := range locked {
		g.Go(func() error {
			return c.writePartition(gctx, locks[k], byPart[k], pointers[k], beats[k], sem)
		})
	}
	return lockCause(lctx, g.Wait())
}

// chunksInB lists B's chunks (under B's locks: what it lists stays there
// until they are released) and its quarantine, and marks each chunk to
// copy that B already holds, whole.
func (c *copier) chunksInB(ctx context.Context) error {
	if len(c.chunks) == 0 {
		return nil
	}
	quarantined, err := LoadQuarantine(ctx, c.to)
	if err != nil {
		return fmt.Errorf("%s: %w", c.to, err)
	}
	err = c.to.List(ctx, ChunksPrefix, "", func(oi ObjectInfo) error {
		ch := c.chunks[oi.Key[len(oi.Key)-min(64, len(oi.Key)):]]
		switch {
		case ch == nil || ChunkKey(ch.name) != oi.Key:
		case quarantined[ch.name] || oi.Size != ch.stored:
			ch.heal = true // damaged there, or another object of its name
		default:
			ch.inB = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list chunks in %s: %w", c.to, err)
	}
	var total int64
	for _, ch := range c.chunks {
		if !ch.inB && ch.missing == "" {
			total += ch.stored
		}
	}
	if c.o.Progress != nil {
		c.o.Progress.BytesTotal.Store(total)
	}
	return nil
}

// writePartition copies one partition's backups, oldest first, then its
// latest pointer and heartbeat. sem bounds the chunks moving at once
// across partitions.
func (c *copier) writePartition(ctx context.Context, lock *Lock, items []*copyItem, pointer, beat *copyPointer, sem chan struct{}) error {
	var last *copyItem // the newest backup written
	for _, it := range items {
		why, err := c.copyChunks(ctx, it, sem)
		if err != nil {
			return err
		}
		if it.checkOnly {
			continue
		}
		if why != "" {
			c.withResult(func(r *CopyResult) {
				r.notCopied(NotCopied{Key: it.ref.Key, Flow: it.ref.FlowUID, Partition: it.ref.Index, Backup: it.ref.ID, Kind: NotCopiedMissing, Reason: why})
			})
			continue
		}
		// Every chunk is in B, and B's prune cannot have run since: the
		// manifest may name them, if the lock is still this copy's.
		if err := lock.Check(ctx); err != nil {
			return err
		}
		if err := c.to.Put(ctx, it.ref.Key, it.data); err != nil {
			return fmt.Errorf("write %s to %s: %w", it.ref.Key, c.to, err)
		}
		c.copied(int64(len(it.data)))
		c.mu.Lock()
		c.res.CopiedBackups++
		c.inB[it.ref.Key] = true
		c.mu.Unlock()
		last = it
	}
	if last != nil && (pointer == nil || !c.holds(pointer)) {
		// A's pointer names a backup B lacks (or is not newer than B's):
		// B's names the newest backup written, if it is newer.
		pointer = &copyPointer{key: LatestKey(last.ref.FlowUID, last.ref.Index), uid: last.ref.FlowUID, idx: last.ref.Index, backup: last.ref.ID, data: last.data}
	}
	for _, p := range []*copyPointer{pointer, beat} {
		if p == nil {
			continue
		}
		if err := c.writePointer(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) withResult(fn func(*CopyResult)) {
	c.mu.Lock()
	fn(c.res)
	c.mu.Unlock()
}

// writePointer writes A's pointer or heartbeat p to B if the backup it
// names is in B (a pointer only if it is that backup's manifest, byte for
// byte), and B's (read again, under the lock) is not newer.
func (c *copier) writePointer(ctx context.Context, p *copyPointer) error {
	key := ManifestKey(p.uid, p.idx, p.backup)
	if !c.holds(p) {
		return nil // its backup is not in B (yet): the pointer B has stands
	}
	prefix := LatestPrefix
	if !p.checked.IsZero() {
		prefix = HeartbeatsPrefix
	} else {
		m, err := ReadAll(ctx, c.to, key, MaxManifestBytes)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) || err == nil && !bytes.Equal(m, p.data) {
			return nil // not the manifest it names: B keeps its own pointer
		}
		if err != nil {
			return fmt.Errorf("read %s from %s: %w", key, c.to, err)
		}
	}
	theirs, err := readPointer(ctx, c.to, prefix, p.key, p.uid, p.idx)
	if err != nil {
		return fmt.Errorf("%s: %w", c.to, err)
	}
	if !p.newerThan(theirs) {
		c.skipped(1, int64(len(p.data)))
		return nil
	}
	if err := c.to.Put(ctx, p.key, p.data); err != nil {
		return fmt.Errorf("write %s to %s: %w", p.key, c.to, err)
	}
	c.copied(int64(len(p.data)))
	return nil
}

// holds says whether B holds the backup p names.
func (c *copier) holds(p *copyPointer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inB[ManifestKey(p.uid, p.idx, p.backup)]
}

// copyChunks makes sure every chunk of it is in B, copying those B lacks
// (each chunk once, however many backups name it). why says which chunk
// A could not give ("" when all are in B).
func (c *copier) copyChunks(ctx context.Context, it *copyItem, sem chan struct{}) (string, error) {
	var seen []string
	once := map[string]bool{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.o.Workers)
	for _, ob := range it.m.Objects() {
		if once[ob.SHA256] {
			continue
		}
		once[ob.SHA256] = true
		seen = append(seen, ob.SHA256)
		ch := c.chunks[ob.SHA256]
		g.Go(func() error {
			ch.once.Do(func() { ch.err = c.copyChunk(gctx, ch, sem) })
			if ch.err != nil && !errors.Is(ch.err, ErrCorrupt) && !errors.Is(ch.err, ErrNotFound) {
				return ch.err
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	for _, h := range seen {
		if err := c.chunks[h].err; err != nil {
			return fmt.Sprintf("chunk %s: %v", h[:12], err), nil
		}
	}
	return "", nil
}

// copyChunk copies one chunk from A to B unless B holds it whole (with
// Checksum: unless B's bytes check out). An error wrapping ErrCorrupt or
// ErrNotFound is A's chunk (damaged or gone): the backups naming it are
// not copied; any other error stops the copy.
func (c *copier) copyChunk(ctx context.Context, ch *copyChunk, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-sem }()
	release, err := c.o.Memory.Acquire(ctx, 2*ch.stored)
	if err != nil {
		return err
	}
	defer release()
	key := ChunkKey(ch.name)
	theirs := "" // with Checksum, an encrypted chunk's bytes in B (sha256)
	if ch.inB && c.o.Checksum {
		b, err := ReadSized(ctx, c.to, key, ch.stored)
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("read %s from %s: %w", key, c.to, err)
		}
		switch whole := err == nil && ch.check(b) == nil; {
		case whole && !ch.encrypted:
			c.skipped(1, ch.stored)
			return nil
		case whole:
			// An encrypted chunk cannot be checked without its key: B's
			// bytes are compared with A's.
			theirs = SumHex(b)
		default:
			ch.inB, ch.heal = false, true
		}
	}
	if ch.inB && theirs == "" {
		c.skipped(1, ch.stored)
		return nil
	}
	b, err := ch.read(ctx, c.from)
	if err != nil {
		return err
	}
	if theirs != "" {
		if SumHex(b) == theirs {
			c.skipped(1, ch.stored)
			return nil
		}
		ch.heal = true
	}
	if err := c.to.Put(ctx, key, b); err != nil {
		return fmt.Errorf("write %s to %s: %w", key, c.to, err)
	}
	c.copied(int64(len(b)))
	c.mu.Lock()
	c.res.CopiedChunks++
	if ch.heal {
		c.res.HealedChunks++
	}
	c.mu.Unlock()
	if ch.heal {
		// A chunk verify had quarantined in B is whole there again.
		if err := c.to.Delete(ctx, QuarantineKey(ch.name)); err != nil {
			return fmt.Errorf("clear quarantine of healed chunk %s in %s: %w", ch.name[:12], c.to, err)
		}
	}
	return nil
}

// read reads the chunk from s and checks it, reading it again when it
// arrives damaged: only the same damaged bytes twice are damage in the
// store (ErrCorrupt).
func (ch *copyChunk) read(ctx context.Context, s Store) ([]byte, error) {
	seen := map[string]bool{}
	var err error
	for attempt := 0; attempt < MaxReads; attempt++ {
		var b []byte
		b, err = ReadSized(ctx, s, ChunkKey(ch.name), ch.stored)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		if err == nil {
			if err = ch.check(b); err == nil {
				return b, nil
			}
			sum := SumHex(b)
			if seen[sum] {
				break
			}
			seen[sum] = true
		}
	}
	return nil, fmt.Errorf("damaged in %s: %w", s, err)
}

// ageHeader starts every age file (encrypted chunks are).
var ageHeader = []byte("age-encryption.org/v1\n")

// check checks a chunk's stored bytes: their size; for a plaintext chunk
// their sha256 where a manifest records it, else the sha256 of their
// content against the chunk's name; for an encrypted one (whose name is
// keyed) its age header.
func (ch *copyChunk) check(b []byte) error {
	switch {
	case int64(len(b)) != ch.stored:
		return fmt.Errorf("%w: %d bytes stored, the manifest says %d", ErrCorrupt, len(b), ch.stored)
	case ch.encrypted:
		if !bytes.HasPrefix(b, ageHeader) {
			return fmt.Errorf("%w: not an age file", ErrCorrupt)
		}
		return nil
	case ch.sums[SumHex(b)]:
		return nil
	}
	content, err := Decompress(nil, b, MaxChunkBytes)
	if err != nil {
		return err
	}
	if SumHex(content) != ch.name {
		return fmt.Errorf("%w: its content does not match its name (sha256)", ErrCorrupt)
	}
	return nil
}

// registry copies the lineage registry's events B lacks (they are written
// once and never change).
func (c *copier) registry(ctx context.Context) error {
	prefix := c.scopePrefix(LineagesPrefix)
	held := map[string]bool{}
	err := c.to.List(ctx, prefix, "", func(oi ObjectInfo) error {
		held[oi.Key] = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("list the lineage registry in %s: %w", c.to, err)
	}
	var keys []ObjectInfo
	err = c.from.List(ctx, prefix, "", func(oi ObjectInfo) error {
		if lineageEventRE.MatchString(strings.TrimPrefix(oi.Key, LineagesPrefix)) {
			keys = append(keys, oi)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list the lineage registry in %s: %w", c.from, err)
	}
	for _, oi := range keys {
		if held[oi.Key] {
			c.skipped(1, oi.Size)
			continue
		}
		b, err := ReadAll(ctx, c.from, oi.Key, 1<<20)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read %s from %s: %w", oi.Key, c.from, err)
		}
		switch err := c.to.PutIfAbsent(ctx, oi.Key, b); {
		case errors.Is(err, ErrExists):
			c.skipped(1, oi.Size)
		case err != nil:
			return fmt.Errorf("write %s to %s: %w", oi.Key, c.to, err)
		default:
			c.copied(int64(len(b)))
		}
	}
	return nil
}
