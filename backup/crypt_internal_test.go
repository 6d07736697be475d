package backup

import (
	"errors"
	"strings"
	"testing"

	"filippo.io/age"
)

// An encrypted chunk opens only under its own name: a chunk copied over
// another (a valid age file, so age alone would accept it), a flipped byte
// and a missing identity are each told apart.
func TestOpenChunk_OnlyUnderItsOwnName(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	sealer, err := NewSealer([]age.Recipient{id.Recipient()}, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	opener := NewOpener([]age.Identity{id})
	z := Compress(nil, []byte(strings.Repeat("state ", 1000)))
	name, other := sealer.ContentID([]byte("a")), sealer.ContentID([]byte("b"))
	stored, err := sealer.sealChunk(nil, name, z)
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), stored...)
	flipped[len(flipped)-20] ^= 1
	stranger, _ := age.GenerateX25519Identity()
	for _, c := range []struct {
		name   string
		c      *Cipher
		stored []byte
		id     string
		want   error
	}{
		{"intact", opener, stored, name, nil},
		{"under another name", opener, stored, other, ErrCorrupt},
		{"a flipped byte", opener, flipped, name, ErrCorrupt},
		{"no identity", sealer, stored, name, ErrIdentityRequired},
		{"a stranger's identity", NewOpener([]age.Identity{stranger}), stored, name, ErrCorrupt},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.c.OpenChunk(nil, c.stored, c.id)
			if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Fatalf("OpenChunk: %v, want %v", err, c.want)
			}
			if err == nil && string(got) != string(z) {
				t.Fatal("opened to other bytes")
			}
		})
	}
}

// Post-quantum (hybrid) recipients cannot be mixed with classic ones in
// age: the chunk key's own stanza takes their label, so manifests seal and
// open with them too.
func TestSealManifest_PostQuantumRecipients(t *testing.T) {
	id, err := age.GenerateHybridIdentity()
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := NewSealer([]age.Recipient{id.Recipient()}, make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	m := validManifest()
	m.Encryption = &EncryptionInfo{Scheme: SchemeAge, Key: sealer.KeyID(), Recipients: sealer.Recipients()}
	b, err := m.Seal(sealer)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Cipher{sealer, NewOpener([]age.Identity{id})} {
		got, err := OpenManifest(b, c)
		if err != nil || got.Locked || got.ID != m.ID {
			t.Fatalf("open: %v (locked %v)", err, got != nil && got.Locked)
		}
	}
}
