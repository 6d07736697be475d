package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ConfigKey holds a location's configuration, in plaintext: that its
// backups are encrypted. The first encrypted backup to a location writes it
// (only if absent); every backup checks it, and a location without one is
// judged by its manifests, so a location never mixes encrypted and
// plaintext backups.
const ConfigKey = "config.json"

const repoFormat = "flowkeep-repo/1"

// Encryption schemes a location's config names.
const (
	SchemeNone = "none"
	SchemeAge  = "age"
)

// RepoConfig is the stored form of ConfigKey.
type RepoConfig struct {
	Format     string    `json:"format"`
	Encryption string    `json:"encryption"`
	Created    time.Time `json:"created"`
	// Signed says the location holds signed backups (see SigningKey):
	// readers must give the public keys they trust.
	Signed bool `json:"signed,omitempty"`
	// Sig signs, and Auth tags (see IndexAuth), the fields above: a config
	// written by a signing (encrypting) backup carries them, and readers
	// that hold the keys to check them ignore a config that fails (see
	// ConfigFor). A config without them is an older one's, or forged.
	Sig  *Signature `json:"sig,omitempty"`
	Auth []string   `json:"auth,omitempty"`
}

// configDigest is the sha256 a config's signature and tags cover.
func (c RepoConfig) configDigest() string {
	b, _ := json.Marshal(RepoConfig{Format: c.Format, Encryption: c.Encryption, Created: c.Created, Signed: c.Signed})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// AuthenticatedBy says whether c is signed by one of trusted's keys or
// tagged under one of auth's.
func (c *RepoConfig) AuthenticatedBy(auth *IndexAuth, trusted *TrustedKeys) bool {
	d := c.configDigest()
	return trusted.verify(c.Sig, "config", d) || auth.verify(c.Auth, "config", d)
}

// seal encodes c, signed with k and tagged under auth (either may be nil).
func (c RepoConfig) seal(auth *IndexAuth, k *SigningKey) []byte {
	c.Sig, c.Auth = nil, nil
	d := c.configDigest()
	c.Sig, c.Auth = k.sign("config", d), auth.tags("config", d)
	b, _ := json.Marshal(c)
	return b
}

// ConfigFor is ReadConfig for a reader holding keys: a config that
// auth's and trusted's keys do not authenticate is ignored (nil, with
// ignored true), and so is a damaged one, by every reader — anyone who can write to the bucket can write one, and
// readers with keys decide from what they can check (the manifests). A
// reader holding no key takes the config as it is.
func ConfigFor(ctx context.Context, s Store, auth *IndexAuth, trusted *TrustedKeys) (c *RepoConfig, ignored bool, err error) {
	c, damaged, err := readConfigOrNone(ctx, s)
	if damaged {
		return nil, true, nil
	}
	if err != nil || c == nil || auth == nil && trusted == nil || c.AuthenticatedBy(auth, trusted) {
		return c, false, err
	}
	return nil, true, nil
}

// ReadConfig reads a location's config (nil if it has none). A body that
// does not parse is read again before it is called damaged.
func ReadConfig(ctx context.Context, s Store) (*RepoConfig, error) {
	c, err := readParsed(ctx, s, ConfigKey, 1<<16, func(b []byte) (RepoConfig, error) {
		var c RepoConfig
		if err := decodeOne(b, &c); err != nil || c.Format != repoFormat || (c.Encryption != SchemeNone && c.Encryption != SchemeAge) {
			return c, fmt.Errorf("%w: %s in %s is damaged or of an unknown format; remove it only if you know which scheme the backups there use", ErrCorrupt, ConfigKey, s)
		}
		return c, nil
	})
	switch {
	case err == nil:
		return &c, nil
	case errors.Is(err, ErrCorrupt):
		return nil, err
	case errors.Is(err, ErrNotFound):
		return nil, nil
	}
	return nil, fmt.Errorf("read %s: %w", ConfigKey, err)
}

// readConfigOrNone is ReadConfig for deciding a location's scheme: a
// config that is damaged or of an unknown format (anyone who can write to
// the bucket can leave one) is as good as none, and damaged says it was
// there. Writers then decide from the manifests and replace it.
func readConfigOrNone(ctx context.Context, s Store) (c *RepoConfig, damaged bool, err error) {
	c, err = ReadConfig(ctx, s)
	if errors.Is(err, ErrCorrupt) {
		return nil, true, nil
	}
	return c, false, err
}

// locationScheme returns how the backups in s are encrypted: its config's
// scheme (configured true); without a config and with infer, that of its
// first manifest (a location written before configs existed); "" for an
// empty location, or without a config and infer (no listing).
func locationScheme(ctx context.Context, s Store, infer bool) (string, bool, error) {
	c, _, err := readConfigOrNone(ctx, s)
	switch {
	case err != nil:
		return "", false, err
	case c != nil:
		return c.Encryption, true, nil
	case !infer:
		return "", false, nil
	}
	scheme, _, err := schemeFromManifests(ctx, s)
	return scheme, false, err
}

// schemeFromManifests is how the first manifest in s is encrypted and
// whether it is signed ("" for a location without one).
func schemeFromManifests(ctx context.Context, s Store) (scheme string, signed bool, err error) {
	stop := errors.New("stop")
	err = s.List(ctx, ManifestsPrefix, "", func(o ObjectInfo) error {
		if _, ok := ParseManifestKey(o.Key); !ok {
			return nil
		}
		b, err := ReadAll(ctx, s, o.Key, MaxManifestBytes)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var head struct {
			Format string     `json:"format"`
			Sig    *Signature `json:"sig"`
		}
		if json.Unmarshal(b, &head) != nil {
			return nil // a broken manifest says nothing
		}
		scheme, signed = SchemeNone, head.Sig != nil
		if head.Format == ManifestFormatAge {
			scheme = SchemeAge
		}
		return stop
	})
	if err != nil && !errors.Is(err, stop) {
		return "", false, fmt.Errorf("list manifests in %s: %w", s, err)
	}
	return scheme, signed, nil
}

// CheckScheme refuses to write encrypted backups (or plaintext ones) to a
// location whose backups use the other scheme, and records an encrypted
// location's scheme in its config if it has none. It takes the config as
// it is: see CheckLocation for a writer holding keys.
func CheckScheme(ctx context.Context, s Store, encrypted bool, now time.Time) error {
	var auth *IndexAuth
	if encrypted {
		auth = &IndexAuth{} // encrypted, with no key to tag the config with
	}
	return checkLocation(ctx, s, auth, nil, nil, false, now)
}

// CheckSigning makes a location that signed backups go to say so in its
// config, and refuses an unsigned backup (k nil) to a location whose config
// says it holds signed ones. It takes the config as it is: see
// CheckLocation.
func CheckSigning(ctx context.Context, s Store, k *SigningKey, now time.Time) error {
	c, damaged, err := readConfigOrNone(ctx, s)
	if err != nil {
		return err
	}
	switch {
	case k == nil && c != nil && c.Signed:
		return fmt.Errorf("%w: the backups in %s are signed: give --signing-key (an unsigned backup there would never be restored)", ErrSigningMismatch, s)
	case k == nil || c != nil && c.Signed:
		return nil
	}
	enc := SchemeNone
	if c != nil {
		enc = c.Encryption
	}
	return writeConfig(ctx, s, RepoConfig{Format: repoFormat, Encryption: enc, Created: now.UTC(), Signed: true}, nil, k, c != nil || damaged)
}

// CheckLocation is what a writer checks before it backs up to s, and what
// it records there: the location's scheme (encrypted with auth non-nil,
// signed with k) must be this writer's. The location's config says it; a
// config this writer's keys do not authenticate (signed by k or one of
// trusted, or tagged under auth) is not believed — anyone who can write to
// the bucket can write one — and the writer decides from the manifests
// instead, then writes a config of its own (authenticated) in its place.
// It refuses (ErrEncryptionMismatch, ErrSigningMismatch) only on evidence it
// can trust.
func CheckLocation(ctx context.Context, s Store, auth *IndexAuth, k *SigningKey, trusted *TrustedKeys, now time.Time) error {
	if k != nil {
		trusted = k.Public().With(trusted)
	}
	return checkLocation(ctx, s, auth, k, trusted, true, now)
}

func checkLocation(ctx context.Context, s Store, auth *IndexAuth, k *SigningKey, trusted *TrustedKeys, checkKeys bool, now time.Time) error {
	encrypted := auth != nil
	want := SchemeNone
	if encrypted {
		want = SchemeAge
	}
	c, damaged, err := readConfigOrNone(ctx, s)
	if err != nil {
		return err
	}
	ignored := damaged || checkKeys && c != nil && (len(auth.keysOrNil()) > 0 || trusted != nil) && !c.AuthenticatedBy(auth, trusted)
	var have string
	var signed bool
	switch {
	case c != nil && !ignored:
		have, signed = c.Encryption, c.Signed
	case encrypted || k != nil || ignored:
		// A plaintext, unsigned writer needs only the config's word (a
		// GET); one that may write a config first looks at the manifests
		// (a LIST, once per location).
		if have, signed, err = schemeFromManifests(ctx, s); err != nil {
			return err
		}
	}
	if have != "" && have != want {
		if want == SchemeAge {
			return fmt.Errorf("%w: the backups in %s are not encrypted, and encrypted ones may not join them; back up to a new prefix", ErrEncryptionMismatch, s)
		}
		return fmt.Errorf("%w: the backups in %s are encrypted with age: give --recipients-file", ErrEncryptionMismatch, s)
	}
	if k == nil && signed {
		return fmt.Errorf("%w: the backups in %s are signed: give --signing-key (an unsigned backup there would never be restored)", ErrSigningMismatch, s)
	}
	switch {
	case c != nil && !ignored && (k == nil || c.Signed):
		return nil // its config says it all already
	case c == nil && !encrypted && k == nil:
		// A plaintext location is known by its manifests: it gets no
		// config (its layout stays what it was before encryption existed).
		return nil
	}
	cfg := RepoConfig{Format: repoFormat, Encryption: want, Created: now.UTC(), Signed: k != nil || signed}
	return writeConfig(ctx, s, cfg, auth, k, c != nil || damaged)
}

// keysOrNil is a's keys (nil for a nil a).
func (a *IndexAuth) keysOrNil() [][]byte {
	if a == nil {
		return nil
	}
	return a.keys
}

// writeConfig writes cfg, tagged and signed, over what is there (replace)
// or only where there is nothing; a config another writer wrote first
// (ErrExists) is checked again.
func writeConfig(ctx context.Context, s Store, cfg RepoConfig, auth *IndexAuth, k *SigningKey, replace bool) error {
	data := cfg.seal(auth, k)
	if replace {
		if err := s.Put(ctx, ConfigKey, data); err != nil {
			return fmt.Errorf("write %s: %w", ConfigKey, err)
		}
		return nil
	}
	switch err := s.PutIfAbsent(ctx, ConfigKey, data); {
	case err == nil:
		return nil
	case errors.Is(err, ErrExists):
		c, _, err := readConfigOrNone(ctx, s)
		if err != nil {
			return err
		}
		if c != nil && c.Encryption != cfg.Encryption {
			return fmt.Errorf("%w: another writer configured %s for %s backups meanwhile", ErrEncryptionMismatch, s, c.Encryption)
		}
		return nil
	default:
		return fmt.Errorf("write %s: %w", ConfigKey, err)
	}
}
