package backup

import (
	"context"
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

// locationScheme returns how the backups in s are encrypted: its config's
// scheme (configured true); without a config and with infer, that of its
// first manifest (a location written before configs existed); "" for an
// empty location, or without a config and infer (no listing).
func locationScheme(ctx context.Context, s Store, infer bool) (string, bool, error) {
	c, err := ReadConfig(ctx, s)
	switch {
	case err != nil:
		return "", false, err
	case c != nil:
		return c.Encryption, true, nil
	case !infer:
		return "", false, nil
	}
	scheme := ""
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
			Format string `json:"format"`
		}
		if json.Unmarshal(b, &head) != nil {
			return nil // a broken manifest says nothing
		}
		scheme = SchemeNone
		if head.Format == ManifestFormatAge {
			scheme = SchemeAge
		}
		return stop
	})
	if err != nil && !errors.Is(err, stop) {
		return "", false, fmt.Errorf("list manifests in %s: %w", s, err)
	}
	return scheme, false, nil
}

// CheckScheme refuses to write encrypted backups (or plaintext ones) to a
// location whose backups use the other scheme, and records an encrypted
// location's scheme in its config if it has none.
func CheckScheme(ctx context.Context, s Store, encrypted bool, now time.Time) error {
	want := SchemeNone
	if encrypted {
		want = SchemeAge
	}
	// A plaintext backup needs only the config's word (a GET); an encrypted
	// one about to write the config first looks at the manifests (a LIST,
	// once per location).
	have, configured, err := locationScheme(ctx, s, encrypted)
	if err != nil {
		return err
	}
	if have != "" && have != want {
		if want == SchemeAge {
			return fmt.Errorf("%w: the backups in %s are not encrypted, and encrypted ones may not join them; back up to a new prefix", ErrEncryptionMismatch, s)
		}
		return fmt.Errorf("%w: the backups in %s are encrypted with age: give --recipients-file", ErrEncryptionMismatch, s)
	}
	if configured || !encrypted {
		// A plaintext location is known by its manifests: it gets no
		// config (its layout stays what it was before encryption existed).
		return nil
	}
	data, _ := json.Marshal(RepoConfig{Format: repoFormat, Encryption: want, Created: now.UTC()})
	switch err := s.PutIfAbsent(ctx, ConfigKey, data); {
	case err == nil:
		return nil
	case errors.Is(err, ErrExists):
		// Another writer configured the location first: it must agree.
		return CheckScheme(ctx, s, encrypted, now)
	default:
		return fmt.Errorf("write %s: %w", ConfigKey, err)
	}
}

// CheckSigning makes a location that signed backups go to say so in its
// config, and refuses an unsigned backup (k nil) to a location whose config
// says it holds signed ones.
func CheckSigning(ctx context.Context, s Store, k *SigningKey, now time.Time) error {
	c, err := ReadConfig(ctx, s)
	if err != nil {
		return err
	}
	switch {
	case k == nil && c != nil && c.Signed:
		return fmt.Errorf("%w: the backups in %s are signed: give --signing-key (an unsigned backup there would never be restored)", ErrSigningMismatch, s)
	case k == nil || c != nil && c.Signed:
		return nil
	}
	if c == nil {
		data, _ := json.Marshal(RepoConfig{Format: repoFormat, Encryption: SchemeNone, Created: now.UTC(), Signed: true})
		switch err := s.PutIfAbsent(ctx, ConfigKey, data); {
		case err == nil:
			return nil
		case errors.Is(err, ErrExists):
			return CheckSigning(ctx, s, k, now) // another writer made one: add to it
		default:
			return fmt.Errorf("write %s: %w", ConfigKey, err)
		}
	}
	c.Signed = true
	data, _ := json.Marshal(c)
	if err := s.Put(ctx, ConfigKey, data); err != nil {
		return fmt.Errorf("write %s: %w", ConfigKey, err)
	}
	return nil
}
