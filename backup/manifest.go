package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/recovery"
)

var keyIDRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// ManifestFormat identifies the manifest format this package writes: a
// sealed manifest, {"format", "sha256", "manifest"}, whose sha256 covers the
// compact JSON of "manifest", so a changed byte that still parses (an epoch,
// a size) is caught. ManifestFormatV1 manifests (unsealed, written before)
// are still read.
const (
	ManifestFormat   = "flowkeep-backup/2"
	ManifestFormatV1 = "flowkeep-backup/1"
	// ManifestFormatAge is an encrypted manifest (see Cipher): {"format",
	// "sha256", "index", "sealed"}, the index in plaintext, the sealed
	// ManifestFormat manifest and the chunk key age-encrypted, the sha256
	// covering the compact index and the sealed bytes.
	ManifestFormatAge = "flowkeep-backup/2+age"
)

// sealed is the stored form of a manifest. Sig, if set, signs SHA256 (see
// SigningKey).
type sealed struct {
	Format   string          `json:"format"`
	SHA256   string          `json:"sha256"`
	Manifest json.RawMessage `json:"manifest"`
	Sig      *Signature      `json:"sig,omitempty"`
}

// Limits a manifest must respect; anything beyond is refused as corrupt or
// malicious before a byte of its objects is fetched.
const (
	MaxManifestBytes = 32 << 20
	MaxChunkBytes    = 64 << 20
	MaxPartitions    = 1 << 16
	MaxChunks        = 1 << 20
	MaxImageBytes    = 1 << 44 // 16 TiB
	MaxTags          = 16
)

// Manifest describes one backup of one partition. It is written last.
type Manifest struct {
	Format    string       `json:"format"`
	ID        string       `json:"id"`
	Created   time.Time    `json:"created"`
	Flow      FlowRef      `json:"flow"`
	Partition PartitionRef `json:"partition"`
	// Epochs is the restorable range: the partition as backed up can resume
	// at any epoch in [Lo, Hi] (Lo its commit epoch, Hi its frontier).
	Epochs EpochRange `json:"epochs"`
	// Execution is the last execution recorded in the backed-up partition
	// (-1 if the flow never ran).
	Execution int64     `json:"execution"`
	Intervals Intervals `json:"intervals"`
	Agent     AgentInfo `json:"agent"`
	Base      Image     `json:"base"`
	Delta     *Delta    `json:"delta,omitempty"`
	// Encryption, if set, says the backup is encrypted (see Cipher).
	Encryption *EncryptionInfo `json:"encryption,omitempty"`
	// Lineage is the history of the partition it captured (absent in
	// backups older than lineages: the flow's root, see LineageOf).
	Lineage *recovery.Lineage `json:"lineage,omitempty"`
	// Runs are the partition's recent runs (see recovery.Run): two
	// backups of one lineage are one history only along them.
	Runs []recovery.Run `json:"runs,omitempty"`
	// Tags are the operator's labels (backup --tag), which retention can
	// keep by (prune --keep-tag).
	Tags []string `json:"tags,omitempty"`

	// Locked says the manifest is encrypted and was not opened (no identity
	// given opens it): only its plaintext index is known, which is what
	// quick verify, list and prune need (ids, epochs, chunk names and
	// stored sizes; no content sha256s, sizes or agent).
	Locked bool `json:"-"`
	cipher *Cipher
	// sig and digest are the stored form's signature and the sha256 it
	// signs (see SignedBy).
	sig    *Signature
	digest string
	// auth are an encrypted manifest's index tags (see IndexAuth).
	auth []string
}

// Signer is the id of the key that signed the manifest ("" unsigned); only
// SignedBy says whether the signature holds.
func (m *Manifest) Signer() string {
	if m.sig == nil {
		return ""
	}
	return m.sig.Key
}

// SignedBy says whether the manifest as stored is signed by one of t's
// keys.
func (m *Manifest) SignedBy(t *TrustedKeys) bool {
	return m.digest != "" && t.verify(m.sig, "manifest", m.digest)
}

// AuthenticatedBy says whether an encrypted manifest is known to come
// from whoever holds a recipient's key: opened by an identity (a writer
// without a recipient's public key cannot make one that opens), or, Locked,
// its index tagged under one of a's keys (see IndexAuth). A plaintext
// manifest is not encrypted, so not authenticated this way.
func (m *Manifest) AuthenticatedBy(a *IndexAuth) bool {
	if m.Encryption == nil {
		return false
	}
	return !m.Locked || m.digest != "" && a.verify(m.auth, "manifest", m.digest)
}

// EncryptionInfo says how a backup is encrypted.
type EncryptionInfo struct {
	Scheme string `json:"scheme"`
	// Key is the id of the chunk key that names its chunks.
	Key string `json:"key"`
	// Recipients is the fingerprint of the recipient set it is sealed to.
	Recipients string `json:"recipients"`
}

// Cipher is what opens the manifest's chunks and checks their names: nil
// for a plaintext backup (and for a Locked one).
func (m *Manifest) Cipher() *Cipher { return m.cipher }

// FlowRef identifies a flow.
type FlowRef struct {
	UID  string `json:"uid"`
	Name string `json:"name"`
}

// PartitionRef identifies a partition.
type PartitionRef struct {
	Index int `json:"index"`
	Count int `json:"count"`
}

// EpochRange is a restorable epoch range with wall times.
type EpochRange struct {
	Lo     uint64    `json:"lo"`
	Hi     uint64    `json:"hi"`
	LoTime time.Time `json:"lo_time"`
	HiTime time.Time `json:"hi_time"`
}

// Contains reports whether e is in the range.
func (r EpochRange) Contains(e uint64) bool { return r.Lo <= e && e <= r.Hi }

// Intervals are the flow's -s and -b when the backup was taken.
type Intervals struct {
	SnapshotMs int64 `json:"snapshot_ms"`
	BackupMs   int64 `json:"backup_ms"`
}

// AgentInfo says who took the backup.
type AgentInfo struct {
	Version string `json:"version"`
	Host    string `json:"host"`
}

// Object is one stored chunk: the sha256 and size of its uncompressed
// content, and its size as stored (zstd).
//
// A chunk of more than one frame (Frames) is stored as its frames' zstd
// frames end to end, each FrameSize bytes of content but the last, and an
// encrypted one seals those as one. Its name is still the sha256 (or keyed
// hash) of its whole content, so a reader that knows nothing of frames
// reads it as any chunk; a reader that does decodes and checks each frame
// on its own, a frame's worth of memory at a time.
type Object struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Stored int64  `json:"stored"`
	// StoredSHA256 is the sha256 of the stored (compressed) bytes, when the
	// backup that uploaded the chunk recorded it. A restore checks it
	// instead of the content's sha256: decompression is a function of the
	// stored bytes, so it pins the content as firmly, over about half the
	// bytes. Should it differ (a chunk stored again, compressed another
	// way), the content's sha256 decides. Deep verify always checks the
	// content.
	StoredSHA256 string `json:"stored_sha256,omitempty"`
	// Frames are the chunk's zstd frames in order, when it has more than
	// one.
	Frames []Frame `json:"frames,omitempty"`
}

// Frame is one zstd frame of a chunk: the name of its content (computed
// as a chunk's is), its size, and the size of the frame.
type Frame struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	Stored int64  `json:"stored"`
}

// FrameList is the chunk's frames: Frames, or the whole chunk as one.
func (o Object) FrameList() []Frame {
	if len(o.Frames) > 0 {
		return o.Frames
	}
	return []Frame{{SHA256: o.SHA256, Size: o.Size, Stored: o.Stored}}
}

// Image is a page image of the partition file.
type Image struct {
	// ID is the backup that captured this image (later backups reuse it).
	ID       string    `json:"id"`
	Captured time.Time `json:"captured"`
	PageSize int       `json:"page_size"`
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256"`
	Chunks   []Object  `json:"chunks"`
	// Hi, Execution, ExecutionStarted and Rows describe the partition at
	// capture; they decide whether a later delta may extend this image.
	Hi               uint64 `json:"hi"`
	Execution        int64  `json:"execution"`
	ExecutionStarted int64  `json:"execution_started_ms"`
	Rows             int64  `json:"rows"`
	// Schema is the partition's schema version at capture (absent: 1).
	Schema int `json:"schema,omitempty"`
}

// SchemaVersion is the image's partition schema version.
func (i Image) SchemaVersion() int {
	if i.Schema == 0 {
		return 1
	}
	return i.Schema
}

// Delta holds the rows at or after Watermark, to lay over the image.
type Delta struct {
	Watermark uint64   `json:"watermark"`
	Size      int64    `json:"size"`
	SHA256    string   `json:"sha256"`
	Chunks    []Object `json:"chunks"`
	Rows      int64    `json:"rows"`
	// Schema is the delta file's schema version (absent: 1).
	Schema int `json:"schema,omitempty"`
}

// Objects returns every object the manifest needs.
func (m *Manifest) Objects() []Object {
	out := append([]Object(nil), m.Base.Chunks...)
	if m.Delta != nil {
		out = append(out, m.Delta.Chunks...)
	}
	return out
}

// StoredBytes is the total stored size of the manifest's objects.
func (m *Manifest) StoredBytes() int64 {
	var n int64
	for _, o := range m.Objects() {
		n += o.Stored
	}
	return n
}

// Marshal encodes the manifest in its sealed form.
func (m *Manifest) Marshal() ([]byte, error) { return m.marshal(nil) }

func (m *Manifest) marshal(k *SigningKey) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	digest := hex.EncodeToString(sum[:])
	return json.MarshalIndent(sealed{Format: ManifestFormat, SHA256: digest, Manifest: body, Sig: k.sign("manifest", digest)}, "", " ")
}

// Seal encodes the manifest as it is stored: sealed (Marshal), or with c
// encrypted, behind its plaintext index.
func (m *Manifest) Seal(c *Cipher) ([]byte, error) { return m.SealWith(c, nil) }

// SealWith is Seal, signed with k (if not nil).
func (m *Manifest) SealWith(c *Cipher, k *SigningKey) ([]byte, error) {
	if c == nil {
		return m.marshal(k)
	}
	plain, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	if m.Encryption == nil || m.Encryption.Key != c.KeyID() {
		return nil, fmt.Errorf("manifest %s does not name the chunk key it is sealed with", m.ID)
	}
	payload, err := json.Marshal(manifestPayload{ChunkKey: c.key.secret, Manifest: plain})
	if err != nil {
		return nil, err
	}
	box, err := c.sealManifest(payload)
	if err != nil {
		return nil, err
	}
	idx, err := json.Marshal(m.indexV2())
	if err != nil {
		return nil, err
	}
	digest := lockedSum(idx, box)
	return json.MarshalIndent(lockedForm{Format: ManifestFormatAge, SHA256: digest, Index: idx, Sealed: box, Sig: k.sign("manifest", digest), Auth: c.auth.tags("manifest", digest)}, "", " ")
}

// lockedForm is the stored form of an encrypted manifest.
type lockedForm struct {
	Format string          `json:"format"`
	SHA256 string          `json:"sha256"`
	Index  json.RawMessage `json:"index"`
	Sealed []byte          `json:"sealed"`
	Sig    *Signature      `json:"sig,omitempty"`
	// Auth tags SHA256 for each recipient (see IndexAuth).
	Auth []string `json:"auth,omitempty"`
}

// manifestPayload is what an encrypted manifest's age file holds.
type manifestPayload struct {
	ChunkKey []byte          `json:"chunk_key"`
	Manifest json.RawMessage `json:"manifest"`
}

// indexV2 is the plaintext part of an encrypted manifest: only what list,
// quick verify and prune need, so the bucket says no more than it must.
// The backup's id (its time), the flow's uid, the partition, the
// restorable epochs and the time of the newest, the lineage's ids, fork
// epochs and runs (no hosts), the chunks' keyed names and stored sizes,
// and the operator's tags (prune keeps by them). The flow's name, hosts, execution counts, intervals, key ids and
// recipient fingerprints, sizes and content hashes are sealed.
type indexV2 struct {
	V         int            `json:"v"`
	ID        string         `json:"id"`
	Flow      string         `json:"flow"`
	Partition PartitionRef   `json:"partition"`
	Lo        uint64         `json:"lo"`
	Hi        uint64         `json:"hi"`
	HiTime    time.Time      `json:"hi_time"`
	Lineage   *indexLineage  `json:"lineage,omitempty"`
	Runs      []recovery.Run `json:"runs,omitempty"`
	BaseID    string         `json:"base_id"`
	Base      []indexObject  `json:"base"`
	Delta     []indexObject  `json:"delta,omitempty"`
	Tags      []string       `json:"tags,omitempty"`
}

// indexLineage is a lineage as an index names it: no hosts, no reasons.
type indexLineage struct {
	ID        string          `json:"id"`
	Created   time.Time       `json:"created"`
	Fork      recovery.Epoch  `json:"fork,omitempty"`
	Ancestors []indexAncestor `json:"ancestors,omitempty"`
}

type indexAncestor struct {
	ID   string         `json:"id"`
	Upto recovery.Epoch `json:"upto"`
	Seen time.Time      `json:"seen,omitzero"`
	Runs []recovery.Run `json:"runs,omitempty"`
}

func (m *Manifest) indexV2() indexV2 {
	ix := indexV2{V: 2, ID: m.ID, Flow: m.Flow.UID, Partition: m.Partition, Lo: m.Epochs.Lo, Hi: m.Epochs.Hi, HiTime: m.Epochs.HiTime,
		Runs: m.Runs, BaseID: m.Base.ID, Base: indexObjects(m.Base.Chunks), Tags: m.Tags}
	if l := m.Lineage; l != nil {
		il := &indexLineage{ID: l.ID, Created: l.Created, Fork: l.Fork}
		for _, a := range l.Ancestors {
			il.Ancestors = append(il.Ancestors, indexAncestor{ID: a.ID, Upto: a.Upto, Seen: a.Seen, Runs: a.Runs})
		}
		ix.Lineage = il
	}
	if m.Delta != nil {
		ix.Delta = indexObjects(m.Delta.Chunks)
	}
	return ix
}

// manifest is the Locked manifest an index describes.
func (ix *indexV2) manifest() *Manifest {
	created, _ := BackupIDTime(ix.ID)
	m := &Manifest{Format: ManifestFormat, ID: ix.ID, Created: created, Flow: FlowRef{UID: ix.Flow}, Partition: ix.Partition,
		Epochs: EpochRange{Lo: ix.Lo, Hi: ix.Hi, HiTime: ix.HiTime}, Execution: -1, Encryption: &EncryptionInfo{Scheme: SchemeAge},
		Runs: ix.Runs, Base: Image{ID: ix.BaseID, Chunks: lockedObjects(ix.Base)}, Tags: ix.Tags, Locked: true}
	if il := ix.Lineage; il != nil {
		l := &recovery.Lineage{ID: il.ID, Created: il.Created, Fork: il.Fork}
		for _, a := range il.Ancestors {
			l.Ancestors = append(l.Ancestors, recovery.Ancestor{ID: a.ID, Upto: a.Upto, Seen: a.Seen, Runs: a.Runs})
		}
		m.Lineage = l
	}
	if len(ix.Delta) > 0 {
		m.Delta = &Delta{Chunks: lockedObjects(ix.Delta)}
	}
	return m
}

func lockedObjects(io []indexObject) []Object {
	out := make([]Object, len(io))
	for i, o := range io {
		out[i] = Object{SHA256: o.ID, Stored: o.Stored}
	}
	return out
}

// manifestIndex is the plaintext part of an encrypted manifest as
// flowkeep wrote it before indexV2 (still read).
type manifestIndex struct {
	ID         string            `json:"id"`
	Created    time.Time         `json:"created"`
	Flow       FlowRef           `json:"flow"`
	Partition  PartitionRef      `json:"partition"`
	Epochs     EpochRange        `json:"epochs"`
	Execution  int64             `json:"execution"`
	Intervals  Intervals         `json:"intervals"`
	Encryption EncryptionInfo    `json:"encryption"`
	Lineage    *recovery.Lineage `json:"lineage,omitempty"`
	Runs       []recovery.Run    `json:"runs,omitempty"`
	BaseID     string            `json:"base_id"`
	Base       []indexObject     `json:"base"`
	Delta      []indexObject     `json:"delta,omitempty"`
}

// indexObject is a chunk as the index names it: its name and stored size.
type indexObject struct {
	ID     string `json:"id"`
	Stored int64  `json:"stored"`
}

func indexObjects(objs []Object) []indexObject {
	out := make([]indexObject, len(objs))
	for i, o := range objs {
		out[i] = indexObject{ID: o.SHA256, Stored: o.Stored}
	}
	return out
}

func (m *Manifest) index() manifestIndex {
	ix := manifestIndex{ID: m.ID, Created: m.Created, Flow: m.Flow, Partition: m.Partition, Epochs: m.Epochs,
		Execution: m.Execution, Intervals: m.Intervals, Lineage: m.Lineage, Runs: m.Runs, BaseID: m.Base.ID, Base: indexObjects(m.Base.Chunks)}
	if m.Encryption != nil {
		ix.Encryption = *m.Encryption
	}
	if m.Delta != nil {
		ix.Delta = indexObjects(m.Delta.Chunks)
	}
	return ix
}

// manifest is the Locked manifest an index describes.
func (ix *manifestIndex) manifest() *Manifest {
	objs := func(io []indexObject) []Object {
		out := make([]Object, len(io))
		for i, o := range io {
			out[i] = Object{SHA256: o.ID, Stored: o.Stored}
		}
		return out
	}
	enc := ix.Encryption
	m := &Manifest{Format: ManifestFormat, ID: ix.ID, Created: ix.Created, Flow: ix.Flow, Partition: ix.Partition, Epochs: ix.Epochs,
		Execution: ix.Execution, Intervals: ix.Intervals, Encryption: &enc, Lineage: ix.Lineage, Runs: ix.Runs, Base: Image{ID: ix.BaseID, Chunks: objs(ix.Base)}, Locked: true}
	if len(ix.Delta) > 0 {
		m.Delta = &Delta{Chunks: objs(ix.Delta)}
	}
	return m
}

func lockedSum(idx, box []byte) string {
	h := sha256.New()
	h.Write(idx)
	h.Write(box)
	return hex.EncodeToString(h.Sum(nil))
}

// ParseManifest is OpenManifest without keys: an encrypted manifest comes
// back Locked.
func ParseManifest(b []byte) (*Manifest, error) { return OpenManifest(b, nil) }

// OpenManifest decodes, checks the seal of, and validates a manifest,
// opening it with c if it is encrypted. It never trusts sizes, counts or
// names: everything a restore will act on is checked here. An encrypted
// manifest that none of c's identities (or its chunk key) opens comes back
// Locked, its plaintext index checked; one whose index disagrees with what
// it seals is corrupt.
func OpenManifest(b []byte, c *Cipher) (*Manifest, error) {
	if len(b) > MaxManifestBytes {
		return nil, fmt.Errorf("%w: manifest of %d bytes exceeds %d", ErrCorrupt, len(b), MaxManifestBytes)
	}
	// Seal writes the format first: a look at the head tells the two apart
	// without parsing a large plaintext manifest twice.
	if bytes.Contains(b[:min(len(b), 128)], []byte(`"`+ManifestFormatAge+`"`)) {
		return openLocked(b, c)
	}
	return parsePlain(b)
}

func openLocked(b []byte, c *Cipher) (*Manifest, error) {
	var lf lockedForm
	if err := decodeOne(b, &lf); err != nil {
		return nil, fmt.Errorf("%w: encrypted manifest: %v", ErrCorrupt, err)
	}
	var idx bytes.Buffer
	if err := json.Compact(&idx, lf.Index); err != nil {
		return nil, fmt.Errorf("%w: encrypted manifest: %v", ErrCorrupt, err)
	}
	if !hexSHA256RE.MatchString(lf.SHA256) || lockedSum(idx.Bytes(), lf.Sealed) != lf.SHA256 {
		return nil, fmt.Errorf("%w: encrypted manifest does not match its own sha256 (changed after it was written)", ErrCorrupt)
	}
	var version struct {
		V int `json:"v"`
	}
	if err := json.Unmarshal(idx.Bytes(), &version); err != nil {
		return nil, fmt.Errorf("%w: encrypted manifest index: %v", ErrCorrupt, err)
	}
	var locked *Manifest
	var ix manifestIndex
	var ix2 indexV2
	switch version.V {
	case 0:
		if err := decodeOne(idx.Bytes(), &ix); err != nil {
			return nil, fmt.Errorf("%w: encrypted manifest index: %v", ErrCorrupt, err)
		}
		locked = ix.manifest()
	case 2:
		if err := decodeOne(idx.Bytes(), &ix2); err != nil {
			return nil, fmt.Errorf("%w: encrypted manifest index: %v", ErrCorrupt, err)
		}
		locked = ix2.manifest()
	default:
		return nil, fmt.Errorf("%w: encrypted manifest index of version %d (a newer flowkeep wrote it?)", ErrCorrupt, version.V)
	}
	locked.sig, locked.digest, locked.auth = lf.Sig, lf.SHA256, lf.Auth
	if err := locked.Validate(); err != nil {
		return nil, err
	}
	payload, err := c.openManifest(lf.Sealed)
	var none *age.NoIdentityMatchError
	if errors.As(err, &none) {
		return locked, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: manifest %s does not decrypt: %v", ErrCorrupt, locked.ID, err)
	}
	var p manifestPayload
	if err := decodeOne(payload, &p); err != nil || len(p.ChunkKey) != 32 {
		return nil, fmt.Errorf("%w: manifest %s: sealed payload: %v", ErrCorrupt, locked.ID, err)
	}
	m, err := parsePlain(p.Manifest)
	if err != nil {
		return nil, err
	}
	if m.Encryption == nil || m.Encryption.Scheme != SchemeAge || m.Encryption.Key != newChunkKey(p.ChunkKey).id {
		return nil, fmt.Errorf("%w: manifest %s does not name the chunk key it carries", ErrCorrupt, locked.ID)
	}
	var again []byte
	if version.V == 2 {
		again, _ = json.Marshal(m.indexV2())
	} else {
		again, _ = json.Marshal(m.index())
	}
	if !bytes.Equal(again, idx.Bytes()) {
		return nil, fmt.Errorf("%w: manifest %s: its plaintext index disagrees with the manifest it seals", ErrCorrupt, locked.ID)
	}
	m.cipher = c.withKey(p.ChunkKey)
	m.sig, m.digest, m.auth = lf.Sig, lf.SHA256, lf.Auth
	return m, nil
}

// parsePlain parses a plaintext manifest (sealed or v1).
func parsePlain(b []byte) (*Manifest, error) {
	var outer sealed
	if err := decodeOne(b, &outer); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
	}
	body := b
	if outer.Format == ManifestFormat {
		var compact bytes.Buffer
		if err := json.Compact(&compact, outer.Manifest); err != nil {
			return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
		}
		sum := sha256.Sum256(compact.Bytes())
		if !hexSHA256RE.MatchString(outer.SHA256) || hex.EncodeToString(sum[:]) != outer.SHA256 {
			return nil, fmt.Errorf("%w: manifest does not match its own sha256 (changed after it was written)", ErrCorrupt)
		}
		body = outer.Manifest
	}
	var m Manifest
	if err := decodeOne(body, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorrupt, err)
	}
	if outer.Format == ManifestFormat && m.Format != ManifestFormat {
		return nil, fmt.Errorf("%w: sealed manifest of format %q", ErrCorrupt, m.Format)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if outer.Format == ManifestFormat {
		m.sig, m.digest = outer.Sig, outer.SHA256
	}
	return &m, nil
}

// decodeOne decodes exactly one JSON value.
func decodeOne(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}

// Validate checks a manifest's invariants.
func (m *Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: manifest %s: %s", ErrCorrupt, m.ID, fmt.Sprintf(format, args...))
	}
	switch {
	case m.Format != ManifestFormat && m.Format != ManifestFormatV1:
		return bad("format %q, want %q", m.Format, ManifestFormat)
	case !backupIDRE.MatchString(m.ID):
		return bad("id is not a backup id")
	case !flowUIDRE.MatchString(m.Flow.UID):
		return bad("flow uid %q is not hex", m.Flow.UID)
	case len(m.Flow.Name) > 256:
		return bad("flow name too long")
	case m.Partition.Count < 1 || m.Partition.Count > MaxPartitions:
		return bad("partition count %d out of range", m.Partition.Count)
	case m.Partition.Index < 0 || m.Partition.Index >= m.Partition.Count:
		return bad("partition index %d not below count %d", m.Partition.Index, m.Partition.Count)
	case m.Epochs.Lo < 1 || m.Epochs.Lo > m.Epochs.Hi:
		return bad("epoch range [%d, %d] is empty", m.Epochs.Lo, m.Epochs.Hi)
	case m.Execution < -1:
		return bad("execution %d", m.Execution)
	case m.Lineage != nil && m.Lineage.Validate() != nil:
		return bad("%v", m.Lineage.Validate())
	case len(m.Runs) > recovery.MaxRuns:
		return bad("%d runs", len(m.Runs))
	case len(m.Tags) > MaxTags:
		return bad("%d tags", len(m.Tags))
	case m.Encryption != nil && (m.Encryption.Scheme != SchemeAge || !m.Locked && (!keyIDRE.MatchString(m.Encryption.Key) || !keyIDRE.MatchString(m.Encryption.Recipients))):
		return bad("encryption %+v", *m.Encryption)
	}
	for _, t := range m.Tags {
		if err := ValidateTag(t); err != nil {
			return bad("%v", err)
		}
	}
	if m.Locked {
		return m.validateIndex()
	}
	if err := checkObjects(m.Base.Chunks, m.Base.Size, m.Base.SHA256); err != nil {
		return bad("base: %v", err)
	}
	if m.Base.PageSize < 512 || m.Base.PageSize > 65536 || m.Base.PageSize&(m.Base.PageSize-1) != 0 {
		return bad("base page size %d", m.Base.PageSize)
	}
	if m.Base.Size%int64(m.Base.PageSize) != 0 || m.Base.Size == 0 {
		return bad("base size %d is not a whole number of pages", m.Base.Size)
	}
	if !backupIDRE.MatchString(m.Base.ID) {
		return bad("base id is not a backup id")
	}
	if m.Delta != nil {
		if err := checkObjects(m.Delta.Chunks, m.Delta.Size, m.Delta.SHA256); err != nil {
			return bad("delta: %v", err)
		}
		if m.Delta.Size == 0 || m.Delta.Watermark < 1 {
			return bad("empty delta")
		}
	}
	return nil
}

// validateIndex checks what a Locked manifest's index says.
func (m *Manifest) validateIndex() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: manifest %s: %s", ErrCorrupt, m.ID, fmt.Sprintf(format, args...))
	}
	if m.Encryption == nil {
		return bad("locked, but not encrypted")
	}
	if !backupIDRE.MatchString(m.Base.ID) {
		return bad("base id is not a backup id")
	}
	if len(m.Base.Chunks) == 0 || len(m.Objects()) > 2*MaxChunks {
		return bad("%d chunks", len(m.Objects()))
	}
	for _, o := range m.Objects() {
		if !hexSHA256RE.MatchString(o.SHA256) || o.Stored <= 0 || o.Stored > MaxChunkBytes+MaxChunkBytes/8 {
			return bad("chunk %q of stored size %d", o.SHA256, o.Stored)
		}
	}
	return nil
}

func checkObjects(objs []Object, size int64, sum string) error {
	if len(objs) > MaxChunks {
		return fmt.Errorf("%d chunks", len(objs))
	}
	if !hexSHA256RE.MatchString(sum) {
		return fmt.Errorf("sha256 %q is not hex", sum)
	}
	if size < 0 || size > MaxImageBytes {
		return fmt.Errorf("size %d out of range", size)
	}
	var total int64
	for _, o := range objs {
		if !hexSHA256RE.MatchString(o.SHA256) {
			return fmt.Errorf("chunk sha256 %q is not hex", o.SHA256)
		}
		if o.StoredSHA256 != "" && !hexSHA256RE.MatchString(o.StoredSHA256) {
			return fmt.Errorf("chunk %s: stored sha256 %q is not hex", o.SHA256[:12], o.StoredSHA256)
		}
		if o.Size <= 0 || o.Size > MaxChunkBytes || o.Stored <= 0 || o.Stored > MaxChunkBytes+MaxChunkBytes/8 {
			return fmt.Errorf("chunk %s size %d (stored %d) out of range", o.SHA256[:12], o.Size, o.Stored)
		}
		if err := checkFrames(o); err != nil {
			return fmt.Errorf("chunk %s: %w", o.SHA256[:12], err)
		}
		total += o.Size
	}
	if total != size {
		return fmt.Errorf("chunks add up to %d bytes, not %d", total, size)
	}
	return nil
}

// MaxFrames bounds a chunk's frames.
const MaxFrames = 64

// checkFrames checks that a chunk's frames tile its content, and fit in
// its stored bytes (exactly, once those are read: see restore).
func checkFrames(o Object) error {
	if len(o.Frames) == 0 {
		return nil
	}
	if len(o.Frames) == 1 || len(o.Frames) > MaxFrames {
		return fmt.Errorf("%d frames", len(o.Frames))
	}
	var size, stored int64
	for _, f := range o.Frames {
		if !hexSHA256RE.MatchString(f.SHA256) {
			return fmt.Errorf("frame sha256 %q is not hex", f.SHA256)
		}
		if f.Size <= 0 || f.Size > MaxChunkBytes || f.Stored <= 0 || f.Stored > MaxChunkBytes+MaxChunkBytes/8 {
			return fmt.Errorf("frame %s size %d (stored %d) out of range", f.SHA256[:12], f.Size, f.Stored)
		}
		size += f.Size
		stored += f.Stored
	}
	if size != o.Size || stored > o.Stored {
		return fmt.Errorf("frames add up to %d bytes (%d stored), not %d (%d)", size, stored, o.Size, o.Stored)
	}
	return nil
}

// KeyID is the chunk key id, "" for a plaintext backup (e nil).
func (e *EncryptionInfo) KeyID() string {
	if e == nil {
		return ""
	}
	return e.Key
}
