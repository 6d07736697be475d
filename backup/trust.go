package backup

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// What decides restored state must be authenticated. A reader's
// ReadPolicy says which manifests it believes; the others are strays:
// never a restore candidate, never counted by prune's keep or overlap
// decisions (and never deleted by it: it cannot tell whose they are), and
// reported by verify.
//
//   - In an encrypted location (its config says so, a manifest is
//     encrypted, or the reader gives identities), a plaintext manifest is
//     a stray: anyone can write one.
//   - In an encrypted location, an encrypted manifest that the reader's
//     identities do not open is believed only if its plaintext index is
//     tagged under the key of a recipient the reader knows (see
//     IndexAuth): a writer without the recipients' public keys cannot
//     make one. A reader with neither recipients nor identities cannot
//     tell (LocationInfo.Unauthenticated); prune refuses to start so
//     (ErrKeysRequired).
//   - In a signed location (its config says so, a manifest is signed, or
//     the reader gives trusted keys), a manifest not signed by a trusted
//     key is a stray; restore, deep verify and prune refuse to start there
//     without trusted keys (ErrTrustRequired).

// ReadPolicy is what a reader of a location believes.
type ReadPolicy struct {
	// Workers reads this many manifests at once (DefaultCatalogWorkers).
	Workers int
	// Keys open encrypted manifests (nil: they stay Locked).
	Keys *Cipher
	// Trusted are the public keys whose signatures make a manifest
	// believed in a signed location.
	Trusted *TrustedKeys
	// RequireTrust refuses a signed location without Trusted
	// (ErrTrustRequired): restore, deep verify and prune.
	RequireTrust bool
	// Auth, if set, checks the plaintext indexes of encrypted manifests
	// that Keys do not open (see IndexAuth): those it does not
	// authenticate are strays. Readers that decide from indexes (prune,
	// quick verify, list) set it, with Keys' own (Cipher.Auth); restore
	// and deep verify open every manifest they use, and leave it nil.
	Auth *IndexAuth
	// RequireAuth refuses an encrypted location when there is nothing to
	// check its indexes with (ErrKeysRequired): prune.
	RequireAuth bool
}

// Stray is a manifest a reader does not believe.
type Stray struct {
	Key      string
	Manifest *Manifest
	Reason   string
}

// LocationInfo is what a location's config and manifests say of it.
type LocationInfo struct {
	// Encrypted and Signed say which schemes the location holds.
	Encrypted, Signed bool
	// Trusted says signatures were checked (the reader gave trusted keys).
	Trusted bool
	// ConfigIgnored says the location's config.json was not authenticated
	// by the reader's keys, so it was not believed (an older flowkeep
	// wrote it, or someone who can write to the bucket forged it); the
	// manifests decided instead. The next backup writes an authenticated
	// one.
	ConfigIgnored bool
	// Unauthenticated says the location is encrypted and the reader had
	// no key to check its manifests' plaintext indexes with (nor trusted
	// signing keys): a writer to the bucket could have forged what it
	// believed.
	Unauthenticated bool
}

// LoadTrustedCatalog loads the catalog (LoadCatalogWith) and sets apart
// the manifests p does not believe (Catalog.Strays).
func LoadTrustedCatalog(ctx context.Context, s Store, p ReadPolicy) (*Catalog, error) {
	// A reader holding keys believes only a config they authenticate.
	cfg, ignored, err := ConfigFor(ctx, s, p.Auth.With(p.Keys.Auth()), p.Trusted)
	if err != nil {
		return nil, err
	}
	cat, err := LoadCatalogWith(ctx, s, p.Workers, p.Keys)
	if err != nil {
		return nil, err
	}
	loc := LocationInfo{Trusted: p.Trusted != nil, ConfigIgnored: ignored}
	loc.Encrypted = cfg != nil && cfg.Encryption == SchemeAge || p.Keys.CanOpen()
	loc.Signed = cfg != nil && cfg.Signed || p.Trusted != nil
	for _, m := range cat.Manifests {
		loc.Encrypted = loc.Encrypted || m.Encryption != nil
		loc.Signed = loc.Signed || m.Signer() != ""
	}
	auth := p.Auth
	// Signatures checked authenticate as well as tags do, and manifests
	// an identity opens need neither.
	loc.Unauthenticated = loc.Encrypted && auth == nil && p.Trusted == nil && !p.Keys.CanOpen()
	cat.Location = loc
	if loc.Encrypted {
		// The registry's events are plaintext even where the manifests are
		// opened: a reader with identities checks their tags with its
		// identities' keys too.
		cat.Auth = auth.With(p.Keys.Auth())
	}
	if loc.Signed && p.Trusted == nil && p.RequireTrust {
		return nil, fmt.Errorf("%w: %s holds signed backups", ErrTrustRequired, s)
	}
	if loc.Encrypted && auth == nil && p.Trusted == nil && p.RequireAuth {
		return nil, fmt.Errorf("%w (%s)", ErrKeysRequired, s)
	}
	believed := cat.Manifests[:0]
	for _, m := range cat.Manifests {
		if why := strayReason(m, loc, p.Trusted, auth); why != "" {
			cat.Strays = append(cat.Strays, Stray{Key: cat.Keys[m], Manifest: m, Reason: why})
			continue
		}
		believed = append(believed, m)
	}
	cat.Manifests = believed
	return cat, nil
}

// strayReason says why a reader must not believe m ("" if it may).
func strayReason(m *Manifest, loc LocationInfo, trusted *TrustedKeys, auth *IndexAuth) string {
	switch {
	case loc.Encrypted && m.Encryption == nil:
		return "a plaintext backup in an encrypted location (anyone who can write to the bucket can make one): never restored"
	case auth != nil && !m.AuthenticatedBy(auth) && len(m.auth) == 0:
		return "its plaintext index carries no tag (made by a flowkeep older than authenticated indexes, or forged): not believed without an identity that opens it (--identity-file); prune keeps it"
	case auth != nil && !m.AuthenticatedBy(auth):
		return "its plaintext index is not tagged under any recipient given (forged by someone without the recipients' public keys, or made for other recipients): never restored, never counted or deleted by prune"
	case trusted != nil && m.Signer() == "":
		return "not signed, in a location of signed backups (anyone who can write to the bucket can make one): never restored"
	case trusted != nil && !m.SignedBy(trusted) && slices.Contains(trusted.IDs(), m.Signer()):
		return fmt.Sprintf("signed by trusted key %s, but its signature does not hold: changed after it was signed (by someone who can write to the bucket, or damage): never restored", m.Signer())
	case trusted != nil && !m.SignedBy(trusted):
		return fmt.Sprintf("signed by key %s, which is not among the trusted keys: never restored; if the key is yours, add its public key to --trusted-keys", m.Signer())
	}
	return ""
}

// FutureSkew is how far in the future a manifest's id may be dated before
// prune ignores it (and verify reports it): clocks differ, but not by
// more.
const FutureSkew = 10 * time.Minute

// FutureDated says whether m claims to be from after now+FutureSkew.
func FutureDated(m *Manifest, now time.Time) bool {
	t, err := BackupIDTime(m.ID)
	return err == nil && t.After(now.Add(FutureSkew))
}
