package backup

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"filippo.io/age"
	"golang.org/x/crypto/chacha20poly1305"
)

// Encryption errors a caller acts on.
var (
	// ErrIdentityRequired: the backups are encrypted and no identity was
	// given (restore and verify --deep need --identity-file).
	ErrIdentityRequired = errors.New("the backups are encrypted: give the age identity that opens them (--identity-file)")
	// ErrWrongIdentity: none of the identities given opens the backups.
	ErrWrongIdentity = errors.New("cannot decrypt with the given identities")
	// ErrEncryptionMismatch: a plaintext write to an encrypted prefix, or
	// the reverse.
	ErrEncryptionMismatch = errors.New("encryption does not match this location")
)

// Cipher seals and opens an encrypted repository's objects with age. A nil
// *Cipher is a plaintext repository: chunks are named by their sha256 and
// stored as zstd, manifests as sealed JSON.
//
// With a Cipher, chunks are age-encrypted zstd (to the recipients) named by
// HMAC-SHA256 of their content under the chunk key, so equal content still
// dedupes and a name reveals nothing to whoever cannot read the key;
// manifests are age-encrypted to the recipients and to the chunk key (so the
// agent, which holds only public keys and the chunk key, reads its own
// manifests back), behind a plaintext index of what quick verify and prune
// need: epochs, chunk names and stored sizes.
//
// The chunk key lives beside the partitions it names (the machine that holds
// them holds their plaintext anyway, see ChunkKeyFile) and inside every
// encrypted manifest, where restore finds it. It is renewed whenever the
// recipient set changes, so every chunk a manifest names is sealed to that
// manifest's recipients.
type Cipher struct {
	recipients []age.Recipient // backup: seal to these
	labels     []string        // the recipients' age labels (post-quantum)
	fp         string          // fingerprint of the recipient set
	identities []age.Identity  // restore, deep verify: open with these
	key        *chunkKey       // names chunks (nil before a manifest is opened)
	auth       *IndexAuth      // tags and checks plaintext indexes (see IndexAuth)
}

// chunkKey is the secret that names chunks.
type chunkKey struct {
	id     string // public id: a hash of the secret
	secret []byte // 32 bytes
}

func newChunkKey(secret []byte) *chunkKey {
	s := sha256.Sum256(append([]byte("flowkeep chunk key id\x00"), secret...))
	return &chunkKey{id: hex.EncodeToString(s[:8]), secret: secret}
}

// NewSealer returns the Cipher a backup seals with: recipients and the
// chunk key, secret (32 bytes).
func NewSealer(recipients []age.Recipient, secret []byte) (*Cipher, error) {
	fp, err := RecipientsFingerprint(recipients)
	if err != nil {
		return nil, err
	}
	return newSealer(recipients, fp, secret)
}

// newSealer is NewSealer for recipients whose fingerprint is fp.
func newSealer(recipients []age.Recipient, fp string, secret []byte) (*Cipher, error) {
	if len(recipients) == 0 {
		return nil, errors.New("no age recipients")
	}
	if len(secret) != 32 {
		return nil, fmt.Errorf("chunk key of %d bytes, want 32", len(secret))
	}
	auth, err := NewIndexAuth(recipients, nil)
	if err != nil {
		return nil, err
	}
	c := &Cipher{recipients: recipients, fp: fp, key: newChunkKey(secret), auth: auth}
	// Our own stanza must carry the recipients' labels (age refuses to mix
	// post-quantum and classic recipients).
	if l, ok := recipients[0].(age.RecipientWithLabels); ok {
		_, labels, err := l.WrapWithLabels(make([]byte, 16))
		if err != nil {
			return nil, fmt.Errorf("age recipient: %w", err)
		}
		c.labels = labels
	}
	return c, nil
}

// NewOpener returns the Cipher restore and verify open with.
func NewOpener(identities []age.Identity) *Cipher {
	if len(identities) == 0 {
		return nil
	}
	auth, _ := NewIndexAuth(nil, identities)
	return &Cipher{identities: identities, auth: auth}
}

// Auth is what checks plaintext indexes for c: the keys of its recipients
// or of its identities' public keys (nil for a nil c).
func (c *Cipher) Auth() *IndexAuth {
	if c == nil {
		return nil
	}
	return c.auth
}

// CanOpen reports whether c holds identities (restore, verify --deep).
func (c *Cipher) CanOpen() bool { return c != nil && len(c.identities) > 0 }

// KeyID is the public id of the chunk key ("" without one).
func (c *Cipher) KeyID() string {
	if c == nil || c.key == nil {
		return ""
	}
	return c.key.id
}

// Recipients is the fingerprint of the recipient set c seals to.
func (c *Cipher) Recipients() string {
	if c == nil {
		return ""
	}
	return c.fp
}

// withKey is c with the chunk key secret (opened from a manifest).
func (c *Cipher) withKey(secret []byte) *Cipher {
	d := *c
	d.key = newChunkKey(secret)
	return &d
}

// ContentID names a chunk: the hex sha256 of its content, or with a chunk
// key its HMAC-SHA256.
func (c *Cipher) ContentID(b []byte) string {
	if c == nil || c.key == nil {
		return SumHex(b)
	}
	h := hmac.New(sha256.New, c.key.secret)
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// contentKey is the key ContentID's HMAC takes, nil where it is a plain
// sha256.
func (c *Cipher) contentKey() []byte {
	if c == nil || c.key == nil {
		return nil
	}
	return c.key.secret
}

// sealChunk returns z (pieces laid end to end) encrypted to the
// recipients, in dst's array when it is large enough, with the chunk's
// name (id, hex) sealed in front of it, so a chunk copied over another is
// caught before it is decompressed. That
// does not authenticate it: anyone with the recipients' public keys can
// seal any content under any name; the keyed name (ContentID, under the
// secret chunk key) is what a reader checks.
func (c *Cipher) sealChunk(dst []byte, id string, z ...[]byte) ([]byte, error) {
	name, err := hex.DecodeString(id)
	if err != nil {
		return nil, fmt.Errorf("chunk name %q: %w", id, err)
	}
	buf := bytes.NewBuffer(dst[:0])
	w, err := age.Encrypt(buf, c.recipients...)
	if err == nil {
		_, err = w.Write(name)
	}
	for _, p := range z {
		if err == nil {
			_, err = w.Write(p)
		}
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("encrypt chunk: %w", err)
	}
	return buf.Bytes(), nil
}

// OpenChunk returns the stored form of chunk id decrypted (still zstd), in
// dst's array when it is large enough. A nil Cipher returns stored. A chunk
// that does not decrypt, or does not carry its own name, is damaged (or
// misplaced): ErrCorrupt. The caller still checks the content against the
// keyed name (ContentID): age authenticates the bytes only against a key
// their writer chose.
func (c *Cipher) OpenChunk(dst, stored []byte, id string) ([]byte, error) {
	if c == nil {
		return stored, nil
	}
	if !c.CanOpen() {
		return nil, ErrIdentityRequired
	}
	r, err := age.Decrypt(bytes.NewReader(stored), c.identities...)
	if err != nil {
		return nil, fmt.Errorf("%w: chunk does not decrypt: %v", ErrCorrupt, err)
	}
	buf := bytes.NewBuffer(dst[:0])
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, fmt.Errorf("%w: chunk does not decrypt: %v", ErrCorrupt, err)
	}
	b := buf.Bytes()
	if len(b) < sha256.Size || hex.EncodeToString(b[:sha256.Size]) != id {
		return nil, fmt.Errorf("%w: chunk does not carry its name (another chunk stored in its place)", ErrCorrupt)
	}
	return b[sha256.Size:], nil
}

// sealManifest encrypts a manifest's payload to the recipients and to the
// chunk key.
func (c *Cipher) sealManifest(payload []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, append(slices.Clip(c.recipients), keyRecipient{c.key, c.labels})...)
	if err != nil {
		return nil, fmt.Errorf("encrypt manifest: %w", err)
	}
	if _, err := w.Write(payload); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// openManifest decrypts a manifest's payload with the identities and the
// chunk key. A *age.NoIdentityMatchError says none of them opens it.
func (c *Cipher) openManifest(sealed []byte) ([]byte, error) {
	var ids []age.Identity
	if c != nil {
		ids = append(ids, c.identities...)
		if c.key != nil {
			ids = append(ids, keyIdentity{c.key})
		}
	}
	if len(ids) == 0 {
		return nil, &age.NoIdentityMatchError{}
	}
	r, err := age.Decrypt(bytes.NewReader(sealed), ids...)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(r, MaxManifestBytes))
}

// keyRecipient wraps a manifest's file key under the chunk key, so the
// agent that wrote it reads it back without an identity.
type keyRecipient struct {
	k      *chunkKey
	labels []string
}

const keyStanza = "flowkeep-chunk-key"

func (k *chunkKey) wrapKey(salt []byte) []byte {
	m := hmac.New(sha256.New, k.secret)
	m.Write([]byte("flowkeep manifest key\x00"))
	m.Write(salt)
	return m.Sum(nil)
}

func (r keyRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	s, _, err := r.WrapWithLabels(fileKey)
	return s, err
}

func (r keyRecipient) WrapWithLabels(fileKey []byte) ([]*age.Stanza, []string, error) {
	salt := make([]byte, 16)
	rand.Read(salt)
	aead, err := chacha20poly1305.New(r.k.wrapKey(salt))
	if err != nil {
		return nil, nil, err
	}
	body := aead.Seal(nil, make([]byte, chacha20poly1305.NonceSize), fileKey, nil)
	return []*age.Stanza{{Type: keyStanza, Args: []string{r.k.id, base64.RawStdEncoding.EncodeToString(salt)}, Body: body}}, r.labels, nil
}

type keyIdentity struct{ k *chunkKey }

func (i keyIdentity) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	for _, s := range stanzas {
		if s.Type != keyStanza || len(s.Args) != 2 || s.Args[0] != i.k.id {
			continue
		}
		salt, err := base64.RawStdEncoding.DecodeString(s.Args[1])
		if err != nil || len(salt) != 16 {
			continue
		}
		aead, err := chacha20poly1305.New(i.k.wrapKey(salt))
		if err != nil {
			return nil, err
		}
		if fk, err := aead.Open(nil, make([]byte, chacha20poly1305.NonceSize), s.Body, nil); err == nil {
			return fk, nil
		}
	}
	return nil, age.ErrIncorrectIdentity
}

// RecipientsFingerprint names a recipient set: the first 16 hex digits of
// the sha256 of its sorted public keys.
func RecipientsFingerprint(rs []age.Recipient) (string, error) {
	var keys []string
	for _, r := range rs {
		s, ok := r.(fmt.Stringer)
		if !ok {
			return "", fmt.Errorf("age recipient of type %T has no public key form", r)
		}
		keys = append(keys, s.String())
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	sum := sha256.Sum256([]byte(strings.Join(keys, "\n")))
	return hex.EncodeToString(sum[:8]), nil
}

// LoadRecipients reads age recipients files (one public key per line, "#"
// comments), as age -R reads them. It refuses recipients without a public
// key form (plugins), which cannot be fingerprinted.
func LoadRecipients(paths ...string) ([]age.Recipient, error) {
	rs, err := parseKeyFiles("recipients file", paths, age.ParseRecipients)
	if err != nil {
		return nil, err
	}
	if _, err := RecipientsFingerprint(rs); err != nil {
		return nil, err
	}
	return rs, nil
}

// LoadIdentities reads age identity files (AGE-SECRET-KEY-1... lines), as
// age -i reads them.
func LoadIdentities(paths ...string) ([]age.Identity, error) {
	return parseKeyFiles("identity file", paths, age.ParseIdentities)
}

// parseKeyFiles parses every file in paths with parse, what naming them in
// errors.
func parseKeyFiles[T any](what string, paths []string, parse func(io.Reader) ([]T, error)) ([]T, error) {
	var out []T
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		keys, err := parse(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, p, err)
		}
		out = append(out, keys...)
	}
	return out, nil
}
