package backup

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"

	"filippo.io/age"
)

// ErrKeysRequired: a reader that decides what to delete (prune) in an
// encrypted location was given no key to authenticate its plaintext
// indexes with.
var ErrKeysRequired = errors.New("the location holds encrypted backups: give the recipients file the backups are made with (--recipients-file) or an identity (--identity-file), so forged indexes can be told from genuine ones")

// IndexAuth authenticates what an encrypted location keeps in plaintext
// (manifest indexes, latest pointers, the lineage registry's events), so
// that readers holding no identity (prune, quick verify, list, the agent)
// can tell them from forgeries. Every such object carries one tag per
// recipient it was made for: HMAC-SHA256 under a key derived (HKDF) from
// that recipient's public key. A reader holding any recipient's public
// key, or an identity whose public key is a recipient, checks the tag.
//
// What it stops: a writer to the bucket who holds none of the recipients'
// public keys (a leaked bucket credential). What it does not: a writer who
// holds one, who can make whole encrypted backups anyway (sign them to
// stop that; see SigningKey). A manifest that an identity opens is
// authenticated by opening it and needs no tag.
type IndexAuth struct {
	keys [][]byte // one per public key, sorted
}

const indexAuthInfo = "flowkeep index auth v1"

// NewIndexAuth makes the keys of recipients and of the public keys of
// identities (X25519 and hybrid ones; other kinds have none and are
// skipped). It is nil when there are none.
func NewIndexAuth(recipients []age.Recipient, identities []age.Identity) (*IndexAuth, error) {
	var pubs []string
	for _, r := range recipients {
		s, ok := r.(fmt.Stringer)
		if !ok {
			return nil, fmt.Errorf("age recipient of type %T has no public key form", r)
		}
		pubs = append(pubs, s.String())
	}
	for _, id := range identities {
		switch i := id.(type) {
		case *age.X25519Identity:
			pubs = append(pubs, i.Recipient().String())
		case *age.HybridIdentity:
			pubs = append(pubs, i.Recipient().String())
		}
	}
	if len(pubs) == 0 {
		return nil, nil
	}
	slices.Sort(pubs)
	pubs = slices.Compact(pubs)
	a := &IndexAuth{}
	for _, p := range pubs {
		k, err := hkdf.Key(sha256.New, []byte(p), nil, indexAuthInfo, 32)
		if err != nil {
			return nil, fmt.Errorf("derive index key: %w", err)
		}
		a.keys = append(a.keys, k)
	}
	return a, nil
}

// With is the union of a's and b's keys (either may be nil).
func (a *IndexAuth) With(b *IndexAuth) *IndexAuth {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	u := &IndexAuth{keys: slices.Clone(a.keys)}
	for _, k := range b.keys {
		if !slices.ContainsFunc(u.keys, func(x []byte) bool { return hmac.Equal(x, k) }) {
			u.keys = append(u.keys, k)
		}
	}
	return u
}

func indexTag(key []byte, what, digest string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte("flowkeep index auth\x00" + what + "\x00" + digest))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// tags are the tags of digest (a hex sha256 covering an object) as what,
// one per key, sorted (nil for a nil IndexAuth).
func (a *IndexAuth) tags(what, digest string) []string {
	if a == nil {
		return nil
	}
	out := make([]string, len(a.keys))
	for i, k := range a.keys {
		out[i] = indexTag(k, what, digest)
	}
	slices.Sort(out)
	return out
}

// verify says whether one of tags is digest's tag as what under one of
// a's keys.
func (a *IndexAuth) verify(tags []string, what, digest string) bool {
	if a == nil || len(tags) > maxIndexTags {
		return false
	}
	for _, k := range a.keys {
		want := indexTag(k, what, digest)
		for _, t := range tags {
			if hmac.Equal([]byte(t), []byte(want)) {
				return true
			}
		}
	}
	return false
}

// maxIndexTags bounds the tags an object may carry (one per recipient).
const maxIndexTags = 64
