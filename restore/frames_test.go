package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/internal/human"
)

// bigFlow is a one-partition flow whose image is several frames long.
func bigFlow(t *testing.T, s *memstore.Store) *flow {
	t.Helper()
	f := newFlow(t, 1, s)
	f.epochOf(40000, func(i int) (string, string) { return fmt.Sprintf("k%06d", i), fmt.Sprintf("%0200d", i) })
	return f
}

// framed returns the base chunks of m that have frames (at least one).
func framed(t *testing.T, m *backup.Manifest) []backup.Object {
	t.Helper()
	var out []backup.Object
	for _, ob := range m.Base.Chunks {
		if len(ob.Frames) > 1 {
			out = append(out, ob)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no chunk of several frames in %d chunks of %d bytes", len(m.Base.Chunks), m.Base.Size)
	}
	return out
}

// A chunk of several frames restores to the image it was cut from, and
// checks healthy, plaintext or encrypted: each frame is decoded and
// checked on its own, the chunk read once.
func TestFrames_ChunkOfSeveralFramesRestores(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	for _, sealed := range []bool{false, true} {
		t.Run(fmt.Sprint("sealed=", sealed), func(t *testing.T) {
			ctx := context.Background()
			s := memstore.New()
			f := bigFlow(t, s)
			var m *backup.Manifest
			if sealed {
				m = f.backupSealed(id.Recipient())[0].Manifest
			} else {
				m = f.backupPart(0)
			}
			framed(t, m)
			cs := &countingGets{Store: s, gets: map[string]int{}}
			dir := filepath.Join(t.TempDir(), "r")
			o := Options{}
			vo := VerifyOptions{Deep: true}
			if sealed {
				o.Keys = backup.NewOpener([]age.Identity{id})
				vo.Keys = o.Keys
			}
			if _, err := Restore(ctx, cs, dir, o); err != nil {
				t.Fatal(err)
			}
			if objects, total := cs.reads(); objects != total {
				t.Fatalf("%d chunks read %d times", objects, total)
			}
			e, state := loadDir(t, dir)
			if e != 2 || len(state) != 40000 || state["k039999"] != fmt.Sprintf("%0200d", 39999) {
				t.Fatalf("restored epoch %d, %d keys, k039999=%q", e, len(state), state["k039999"])
			}
			rep, err := Verify(ctx, s, vo)
			if err != nil || rep.Status != StatusHealthy {
				t.Fatalf("verify --deep: %v %s %+v", err, rep.Status, rep.Problems)
			}
		})
	}
}

// A chunk damaged in one frame is damaged: the restore falls back to an
// older backup, and deep verify names the chunk and quarantines it.
func TestFrames_DamageInOneFrameIsTheChunks(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := bigFlow(t, s)
	f.backupPart(0)
	f.epochOf(40000, func(i int) (string, string) { return fmt.Sprintf("k%06d", i), fmt.Sprintf("%0199dx", i) })
	newest := f.backupPart(0)
	chunks := framed(t, newest)
	ob := chunks[0]
	// A byte in the last frame's stored bytes (the stored sha256 no longer
	// pins the content: every frame is decoded and checked).
	at := ob.Stored - ob.Frames[len(ob.Frames)-1].Stored/2
	s.Mutate(backup.ChunkKey(ob.SHA256), func(b []byte) []byte { b[at] ^= 0x40; return b })
	res, err := Restore(ctx, s, filepath.Join(t.TempDir(), "r"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Plan.Epoch != 2 || len(res.Fallbacks) != 1 {
		t.Fatalf("restored epoch %d, fallbacks %v: the damaged chunk was not caught", res.Plan.Epoch, res.Fallbacks)
	}
	rep, err := Verify(ctx, s, VerifyOptions{Deep: true, Quarantine: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusDegraded || !strings.Contains(fmt.Sprint(rep.Problems), ob.SHA256[:12]) {
		t.Fatalf("%s %+v", rep.Status, rep.Problems)
	}
	if q, err := backup.LoadQuarantine(ctx, s); err != nil || !q[ob.SHA256] {
		t.Fatalf("quarantined %v (%v), want chunk %s", q, err, ob.SHA256[:12])
	}
}

// A chunk of several frames that one location lacks is read from the next
// one, and the note counts it once, not once per frame.
func TestFrames_FallbackCountsAChunkOnce(t *testing.T) {
	ctx := context.Background()
	ma := memstore.New()
	f := bigFlow(t, ma)
	m := f.backupPart(0)
	chunks := framed(t, m)
	a, b := &place{Store: ma, name: "mem://a"}, &place{Store: memstore.New(), name: "mem://b"}
	copyAll(t, a, b)
	if err := ma.Delete(ctx, backup.ChunkKey(chunks[0].SHA256)); err != nil {
		t.Fatal(err)
	}
	var notes []string
	if _, err := RestoreFrom(ctx, []backup.Store{a, b}, filepath.Join(t.TempDir(), "r"), Options{Note: func(s string) { notes = append(notes, s) }}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("read 1 chunk (%s) from mem://b that mem://a is missing", human.Bytes(chunks[0].Stored))
	if !strings.Contains(strings.Join(notes, "\n"), want) {
		t.Fatalf("notes %q, want %q", notes, want)
	}
}

// A chunk's decrypted frames stay in their buffer until its frames are
// done: the buffer is not back in the pool for another chunk to read
// into (the frames start after the chunk's name, inside it).
func TestFrames_DecryptedChunkKeepsItsBuffer(t *testing.T) {
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	s := memstore.New()
	f := bigFlow(t, s)
	m := f.backupSealed(id.Recipient())[0].Manifest
	c := openManifestCipher(t, s, m, backup.NewOpener([]age.Identity{id}))
	ob := framed(t, m)[0]
	rd := &chunkRead{ob: ob, share: &backup.Share{}, left: len(ob.Frames)}
	sr, err := rd.load(ctx, s, frameCheck{cipher: c})
	if err != nil || sr.err != nil {
		t.Fatal(err, sr.err)
	}
	var got []*[]byte
	for i := 0; i < 8; i++ {
		b := storedBuffers.Get()
		got = append(got, b)
		if sameArray(*b, sr.z) || sameArray(*b, sr.stored) {
			t.Fatal("a buffer the chunk still reads from was handed out again")
		}
	}
	for _, b := range got {
		storedBuffers.Put(b)
	}
	rd.release()
}

// A chunk written whole by an older flowbackup (4 MiB chunks, one frame
// each) has the content, and so the name, of a frame of a newer backup's
// chunk. A deep check reuses a frame it read only for the chunk it was
// read as: the newer chunk is read from the store all the same, and a
// flipped byte in it is found (helper-26 saw "healthy" for such a
// location). The older backup's image stays on local disk meanwhile: a
// third backup, checked last, names its chunks.
func TestDeepVerify_AChunkEqualToAnotherChunksFrameIsStillRead(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := bigFlow(t, s)
	framedBase := f.backupPart(0)
	chunks := framed(t, framedBase)
	img := filepath.Join(t.TempDir(), "image")
	if err := FetchImage(ctx, s, framedBase, img, FetchOptions{}, nil); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// The same image as an older flowbackup stored it, a moment before:
	// each 4 MiB piece a chunk of its own, named by its content.
	older := *framedBase
	older.ID = framedBase.ID[:len(framedBase.ID)-4] + "0b1d"
	older.Created = framedBase.Created.Add(-time.Second)
	older.Base.Chunks = nil
	var off int64
	for _, ob := range framedBase.Base.Chunks {
		if len(ob.Frames) < 2 { // a chunk of one frame is stored as it was
			older.Base.Chunks = append(older.Base.Chunks, ob)
			off += ob.Size
			continue
		}
		for _, fr := range ob.Frames {
			stored := backup.Compress(nil, data[off:off+fr.Size])
			off += fr.Size
			if err := s.Put(ctx, backup.ChunkKey(fr.SHA256), stored); err != nil {
				t.Fatal(err)
			}
			older.Base.Chunks = append(older.Base.Chunks, backup.Object{SHA256: fr.SHA256, Size: fr.Size, Stored: int64(len(stored))})
		}
	}
	// And one a moment after that names all but the last of them.
	later := older
	later.ID = framedBase.ID[:len(framedBase.ID)-4] + "0b2d"
	later.Created = framedBase.Created.Add(time.Second)
	later.Base.Chunks = older.Base.Chunks[:len(older.Base.Chunks)-1]
	later.Base.Size = off - older.Base.Chunks[len(older.Base.Chunks)-1].Size
	sum := sha256.Sum256(data[:later.Base.Size])
	later.Base.SHA256 = hex.EncodeToString(sum[:])
	for _, m := range []*backup.Manifest{&older, &later} {
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, backup.ManifestKey(m.Flow.UID, m.Partition.Index, m.ID), b); err != nil {
			t.Fatal(err)
		}
	}
	verify := func() *Report {
		rep, err := Verify(ctx, s, VerifyOptions{Deep: true})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Checked != 3 {
			t.Fatalf("%d backups checked: %+v", rep.Checked, rep.Problems)
		}
		return rep
	}
	rep := verify()
	if p := fmt.Sprint(rep.Problems); strings.Contains(p, framedBase.ID) || strings.Contains(p, older.ID) || rep.BytesRead != rep.BytesStored {
		t.Fatalf("read %d of %d bytes, problems before any damage: %s", rep.BytesRead, rep.BytesStored, p)
	}
	// A byte of the newer chunk's second frame, whose content the older
	// backup's second chunk holds whole.
	at := chunks[0].Frames[0].Stored + chunks[0].Frames[1].Stored/2
	s.Mutate(backup.ChunkKey(chunks[0].SHA256), func(b []byte) []byte { b[at] ^= 0x40; return b })
	if p := fmt.Sprint(verify().Problems); !strings.Contains(p, framedBase.ID) || strings.Contains(p, older.ID) {
		t.Fatalf("problems %s: want %s's, not %s's", p, framedBase.ID, older.ID)
	}
}
