package backup

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/flowkeep/flowkeep/internal/fsync"
)

// Signed backups separate "may write" from "may read": writers (backup,
// agent) hold an Ed25519 signing key and sign every manifest and latest
// pointer (and lineage registry event); readers (restore, verify, prune)
// hold the public keys they trust. A location that holds signed backups
// says so in its config; there a manifest that is unsigned, or signed by a
// key not trusted, is never restored and never counts in prune's keep or
// overlap decisions, and verify reports it.
//
// Key files are one line each:
//
//	flowkeep-signing-key-1:<base64 seed>   (the private key, mode 0600)
//	flowkeep-ed25519:<base64 public key>   (a public key; a trusted-keys file holds several, "#" comments)
//
// A key's id is the first 16 hex digits of the sha256 of its public key.

const (
	signingKeyPrefix = "flowkeep-signing-key-1:"
	publicKeyPrefix  = "flowkeep-ed25519:"
	signedContext    = "flowkeep-backup signed object v1\x00"
)

// Signing errors a caller acts on.
var (
	// ErrTrustRequired: the location holds signed backups and no trusted
	// public key was given (restore, verify --deep and prune need them).
	ErrTrustRequired = errors.New("the backups here are signed: give the public keys you trust (--trusted-keys FILE)")
	// ErrSigningMismatch: an unsigned backup to a signed location.
	ErrSigningMismatch = errors.New("signing does not match this location")
)

// SigningKey signs manifests.
type SigningKey struct {
	priv ed25519.PrivateKey
	id   string
}

// ID is the key's id (its public key's).
func (k *SigningKey) ID() string { return k.id }

// Public is the key's public half.
func (k *SigningKey) Public() *TrustedKeys {
	return &TrustedKeys{keys: map[string]ed25519.PublicKey{k.id: k.priv.Public().(ed25519.PublicKey)}}
}

// TrustedKeys are the public keys a reader accepts signatures of.
type TrustedKeys struct {
	keys map[string]ed25519.PublicKey
}

// IDs lists the trusted keys' ids.
func (t *TrustedKeys) IDs() []string {
	if t == nil {
		return nil
	}
	out := make([]string, 0, len(t.keys))
	for id := range t.keys {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// With returns t and u together (either may be nil).
func (t *TrustedKeys) With(u *TrustedKeys) *TrustedKeys {
	if t == nil {
		return u
	}
	if u == nil {
		return t
	}
	out := &TrustedKeys{keys: map[string]ed25519.PublicKey{}}
	for _, s := range []*TrustedKeys{t, u} {
		for id, k := range s.keys {
			out.keys[id] = k
		}
	}
	return out
}

func keyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// Signature is a signature in a stored object.
type Signature struct {
	Key     string `json:"key"`
	Ed25519 []byte `json:"ed25519"`
}

// sign signs digest (a hex sha256 that covers an object's content) in the
// context of what it is.
func (k *SigningKey) sign(what, digest string) *Signature {
	if k == nil {
		return nil
	}
	return &Signature{Key: k.id, Ed25519: ed25519.Sign(k.priv, []byte(signedContext+what+"\x00"+digest))}
}

// Verify says whether sig signs digest as what under one of t's keys.
func (t *TrustedKeys) verify(sig *Signature, what, digest string) bool {
	if t == nil || sig == nil {
		return false
	}
	pub, ok := t.keys[sig.Key]
	return ok && ed25519.Verify(pub, []byte(signedContext+what+"\x00"+digest), sig.Ed25519)
}

// GenerateSigningKey writes a new signing key to path (mode 0600, never
// over an existing file) and its public key to path.pub, and returns the
// public key's line.
func GenerateSigningKey(path string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	id := keyID(pub)
	secret := fmt.Sprintf("# flowkeep signing key %s: keep it where backups are written (the agent), never where they are only read\n%s%s\n",
		id, signingKeyPrefix, base64.StdEncoding.EncodeToString(priv.Seed()))
	public := fmt.Sprintf("%s%s", publicKeyPrefix, base64.StdEncoding.EncodeToString(pub))
	if err := fsync.WriteFile(path, []byte(secret), 0o600, false); err != nil {
		return "", fmt.Errorf("write the signing key: %w", err)
	}
	pubFile := fmt.Sprintf("# flowkeep public key %s: give it to readers (--trusted-keys)\n%s\n", id, public)
	if err := fsync.WriteFile(path+".pub", []byte(pubFile), 0o644, false); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("write the public key: %w", err)
	}
	return public, nil
}

// keyLines returns the non-comment lines of a key file.
func keyLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// LoadSigningKey reads a signing key file (GenerateSigningKey's).
func LoadSigningKey(path string) (*SigningKey, error) {
	lines, err := keyLines(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], signingKeyPrefix) {
		return nil, fmt.Errorf("signing key %s: not a flowkeep signing key (make one with flowbackup keygen)", path)
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[0], signingKeyPrefix))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("signing key %s: damaged", path)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	return &SigningKey{priv: priv, id: keyID(priv.Public().(ed25519.PublicKey))}, nil
}

// LoadTrustedKeys reads public key files (one key per line, "#" comments;
// a signing key's .pub, or several collected in one file: list the old and
// the new key while rotating).
func LoadTrustedKeys(paths ...string) (*TrustedKeys, error) {
	t := &TrustedKeys{keys: map[string]ed25519.PublicKey{}}
	for _, p := range paths {
		lines, err := keyLines(p)
		if err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		for i, l := range lines {
			raw, ok := strings.CutPrefix(l, publicKeyPrefix)
			pub, err := base64.StdEncoding.DecodeString(raw)
			if !ok || err != nil || len(pub) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("trusted keys %s, line %d: not a flowkeep public key (flowkeep-ed25519:...; a signing key's .pub file holds one)", p, i+1)
			}
			t.keys[keyID(pub)] = ed25519.PublicKey(pub)
		}
	}
	if len(t.keys) == 0 {
		return nil, fmt.Errorf("trusted keys %s: no public key in it", strings.Join(paths, ", "))
	}
	return t, nil
}
