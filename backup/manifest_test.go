package backup

import (
	"filippo.io/age"

	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func validManifest() *Manifest {
	h := strings.Repeat("ab", 32)
	return &Manifest{
		Format: ManifestFormat, ID: "20261124T101010.123Z-0a0b0c0d", Created: time.Now().UTC(),
		Flow: FlowRef{UID: "00112233445566778899aabbccddeeff", Name: "wc"}, Partition: PartitionRef{Index: 1, Count: 4},
		Epochs: EpochRange{Lo: 2, Hi: 9}, Execution: 3,
		Base: Image{ID: "20261124T101010.123Z-0a0b0c0d", PageSize: 4096, Size: 8192, SHA256: h,
			Chunks: []Object{{SHA256: h, Size: 8192, Stored: 100}}},
	}
}

func TestParseManifest_RejectsWhatARestoreMustNotTrust(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(m *Manifest)
	}{
		{"path traversal in a chunk hash", func(m *Manifest) { m.Base.Chunks[0].SHA256 = "../../../../etc/passwd" + strings.Repeat("a", 42) }},
		{"huge chunk", func(m *Manifest) { m.Base.Chunks[0].Size = 1 << 40; m.Base.Size = 1 << 40 }},
		{"huge stored size", func(m *Manifest) { m.Base.Chunks[0].Stored = 1 << 40 }},
		{"sizes that do not add up", func(m *Manifest) { m.Base.Size = 4096 }},
		{"partition index past count", func(m *Manifest) { m.Partition.Index = 4 }},
		{"negative partition", func(m *Manifest) { m.Partition.Index = -1 }},
		{"absurd partition count", func(m *Manifest) { m.Partition.Count = 1 << 30 }},
		{"empty epoch range", func(m *Manifest) { m.Epochs.Lo = 10 }},
		{"flow uid with slashes", func(m *Manifest) { m.Flow.UID = "../x" }},
		{"unknown format", func(m *Manifest) { m.Format = "other/9" }},
		{"bad page size", func(m *Manifest) { m.Base.PageSize = 1000 }},
		{"bad id", func(m *Manifest) { m.ID = "../../x" }},
	}
	ok, _ := validManifest().Marshal()
	if _, err := ParseManifest(ok); err != nil {
		t.Fatalf("valid manifest refused: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := validManifest()
			tt.mutate(m)
			b, _ := m.Marshal()
			if _, err := ParseManifest(b); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("accepted (err %v)", err)
			}
		})
	}
	if _, err := ParseManifest([]byte(strings.Repeat(" ", MaxManifestBytes+1))); !errors.Is(err, ErrCorrupt) {
		t.Fatal("oversized manifest accepted")
	}
}

// A byte changed in a sealed manifest is caught even where the JSON still
// parses and validates (an epoch, a size); unsealed version-1 manifests
// written before the seal still parse.
func TestParseManifest_SealCatchesChangedValues(t *testing.T) {
	b, err := validManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	changed := bytes.Replace(b, []byte(`"hi": 9`), []byte(`"hi": 8`), 1)
	if bytes.Equal(changed, b) {
		t.Fatalf("test setup: no hi in %s", b)
	}
	if _, err := ParseManifest(changed); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("changed manifest: %v", err)
	}
	// Re-indenting is not a change.
	var pretty bytes.Buffer
	json.Indent(&pretty, b, "", "\t")
	if _, err := ParseManifest(pretty.Bytes()); err != nil {
		t.Fatalf("re-indented manifest refused: %v", err)
	}
	v1 := validManifest()
	v1.Format = ManifestFormatV1
	old, _ := json.Marshal(v1)
	if m, err := ParseManifest(old); err != nil || m.Epochs.Hi != 9 {
		t.Fatalf("version-1 manifest: %+v, %v", m, err)
	}
}

func FuzzParseManifest(f *testing.F) {
	ok, _ := validManifest().Marshal()
	f.Add(ok)
	v1, _ := json.Marshal(validManifest())
	f.Add(v1)
	f.Add([]byte(`{"format":"flowkeep-backup/1"}`))
	// Encrypted manifests are fuzzed opened by the chunk key that sealed
	// them (the payload's parser is reached too).
	id, _ := age.GenerateX25519Identity()
	c, err := NewSealer([]age.Recipient{id.Recipient()}, make([]byte, 32))
	if err != nil {
		f.Fatal(err)
	}
	enc := validManifest()
	enc.Encryption = &EncryptionInfo{Scheme: SchemeAge, Key: c.KeyID(), Recipients: c.Recipients()}
	sealed, err := enc.Seal(c)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sealed)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := OpenManifest(b, c)
		if err != nil {
			return
		}
		if m.Encryption != nil && !m.Locked && m.Cipher() == nil {
			t.Fatal("an opened encrypted manifest without its cipher")
		}
		// Anything accepted must be safe to act on.
		if m.Partition.Index < 0 || m.Partition.Index >= m.Partition.Count || m.Partition.Count > MaxPartitions {
			t.Fatalf("accepted partition %+v", m.Partition)
		}
		for _, o := range m.Objects() {
			if CheckKey(ChunkKey(o.SHA256)) != nil || o.Size > MaxChunkBytes {
				t.Fatalf("accepted object %+v", o)
			}
		}
	})
}

func TestParseManifestKey(t *testing.T) {
	good := "manifests/00112233445566778899aabbccddeeff/part-0003/20261124T101010.123Z-0a0b0c0d.json"
	r, ok := ParseManifestKey(good)
	if !ok || r.Index != 3 || r.FlowUID != "00112233445566778899aabbccddeeff" {
		t.Fatalf("%+v %v", r, ok)
	}
	for _, bad := range []string{"manifests/x/part-0001/y.json", "manifests/00112233/part-abc/20261124T101010.123Z-0a0b0c0d.json", "other/a", "manifests/00112233/part-0001/../../x.json"} {
		if _, ok := ParseManifestKey(bad); ok {
			t.Errorf("accepted %q", bad)
		}
	}
}

// A name someone put in the bucket shows as it is when it prints, quoted
// when it holds a newline, a control sequence or invalid UTF-8.
func TestDisplayKey_QuotesWhatDoesNotPrint(t *testing.T) {
	for _, c := range []struct{ key, want string }{
		{"manifests/abc/part-0000/x.json", "manifests/abc/part-0000/x.json"},
		{"manifests/é.json", "manifests/é.json"},
		{"manifests/x\nFAKE LINE: healthy", `"manifests/x\nFAKE LINE: healthy"`},
		{"manifests/\x1b[2Kx", `"manifests/\x1b[2Kx"`},
		{"manifests/\xff", `"manifests/\xff"`},
	} {
		if got := DisplayKey(c.key); got != c.want {
			t.Errorf("DisplayKey(%q) = %s, want %s", c.key, got, c.want)
		}
	}
}
