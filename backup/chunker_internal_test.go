package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// syncStore is fuzzStore for several writers at once.
type syncStore struct {
	mu sync.Mutex
	*fuzzStore
}

func newSyncStore() *syncStore { return &syncStore{fuzzStore: &fuzzStore{objs: map[string][]byte{}}} }

func (s *syncStore) Put(ctx context.Context, k string, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fuzzStore.Put(ctx, k, b)
}

func (s *syncStore) Stat(ctx context.Context, k string) (ObjectInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fuzzStore.Stat(ctx, k)
}

// failingReader gives n random bytes, then err.
type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	p = p[:min(len(p), f.n)]
	k, err := f.r.Read(p)
	f.n -= k
	return k, err
}

// An upload stopped part-way through a chunk (its source fails, or it is
// cancelled) gives back every byte of the budget, once the frames it had
// sent are compressed: an agent backs up again and again within one
// budget. A whole stream gives its chunks, each of frames that tile it.
func TestUpload_StoppedPartWayGivesTheBudgetBack(t *testing.T) {
	ctx := context.Background()
	src := rand.New(rand.NewSource(1))
	boom := errors.New("disk read failed")
	for _, tc := range []struct {
		name   string
		n      int
		cancel bool
	}{
		{"source fails mid-chunk", ChunkSize + 3*FrameSize + 100, false},
		{"source fails at a frame's end", 2 * FrameSize, false},
		{"cancelled", ChunkSize + FrameSize, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBudget(DefaultMemory)
			u := &uploader{store: newSyncStore(), workers: 4, xfer: &Transfer{}, known: map[string]Object{}, budget: b}
			uctx, cancel := context.WithCancel(ctx)
			defer cancel()
			r := io.Reader(&failingReader{r: src, n: tc.n, err: boom})
			if tc.cancel {
				r = io.MultiReader(io.LimitReader(src, int64(tc.n)), readerFunc(func([]byte) (int, error) { cancel(); <-uctx.Done(); return 0, uctx.Err() }))
			}
			if _, _, _, err := u.upload(uctx, r); err == nil {
				t.Fatal("the upload of a failing source succeeded")
			}
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			defer wcancel()
			release, err := b.Acquire(wctx, b.Bytes())
			if err != nil {
				t.Fatal("the stopped upload kept part of the budget")
			}
			release()
		})
	}
	t.Run("whole", func(t *testing.T) {
		data := make([]byte, ChunkSize+5*FrameSize+7)
		src.Read(data[:len(data)/2]) // half random, half zeros
		u := &uploader{store: newSyncStore(), workers: 4, xfer: &Transfer{}, known: map[string]Object{}, budget: NewBudget(DefaultMemory)}
		objs, size, sum, err := u.upload(ctx, bytes.NewReader(data))
		if err != nil || size != int64(len(data)) || sum != SumHex(data) || len(objs) != 2 {
			t.Fatalf("%d chunks, %d bytes, %v", len(objs), size, err)
		}
		var off int64
		for _, o := range objs {
			if o.SHA256 != SumHex(data[off:off+o.Size]) {
				t.Fatalf("chunk at %d is not named by its content", off)
			}
			for _, f := range o.FrameList() {
				if f.SHA256 != SumHex(data[off:off+f.Size]) {
					t.Fatalf("frame at %d is not named by its content", off)
				}
				off += f.Size
			}
		}
		if len(objs[0].Frames) != ChunkSize/FrameSize || len(objs[1].Frames) != 6 {
			t.Fatalf("frames %d and %d", len(objs[0].Frames), len(objs[1].Frames))
		}
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// Compress's encoders keep a frame's worth of history, not zstd's default
// window of 8 MiB: a frame is the most they are given, so the stored bytes
// (and their sha256, which a restore pins) stay those an older flowbackup
// wrote, and every frame still decodes.
func TestCompress_FrameWindowWritesTheBytesOfZstdsDefault(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	var text bytes.Buffer
	for text.Len() < FrameSize+FrameSize/3 {
		fmt.Fprintf(&text, "word%d,%d\n", rng.Intn(50000), rng.Intn(1000))
	}
	def, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{100, 64 << 10, FrameSize / 3, FrameSize} {
		src := text.Bytes()[:n]
		got := Compress(nil, src)
		if want := def.EncodeAll(src, nil); !bytes.Equal(got, want) {
			t.Errorf("%d bytes: compressed to %d bytes, zstd's default window to %d (different bytes)", n, len(got), len(want))
		}
		back, err := Decompress(nil, got, int64(n))
		if err != nil || !bytes.Equal(back, src) {
			t.Errorf("%d bytes: did not decode back (%v)", n, err)
		}
	}
}

// piecesStore is syncStore taking objects as pieces, which it records.
type piecesStore struct {
	*syncStore
	mu     sync.Mutex
	pieces map[string]int // key -> pieces it came in
}

func (s *piecesStore) PutPieces(ctx context.Context, k string, p [][]byte) error {
	s.mu.Lock()
	s.pieces[k] = len(p)
	s.mu.Unlock()
	return s.syncStore.Put(ctx, k, bytes.Join(p, nil))
}

// A chunk is stored from its compressed frames' own buffers where the
// store takes pieces (S3), through the retrying wrapper too, and copied
// into one buffer where it does not: the stored objects are the same, the
// frames end to end, and each frame decodes to its content.
func TestUpload_StoresAChunkFromItsFramesWhereTheStoreTakesPieces(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, ChunkSize+3*FrameSize+100)
	rand.New(rand.NewSource(3)).Read(data[:len(data)/3])
	stored := map[string]map[string][]byte{}
	for _, tc := range []struct {
		name   string
		pieces bool
		retry  bool
	}{{"one buffer", false, false}, {"pieces", true, false}, {"pieces through retries", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			ss := newSyncStore()
			ps := &piecesStore{syncStore: ss, pieces: map[string]int{}}
			var s Store = ss
			if tc.pieces {
				s = ps
			}
			if tc.retry {
				s = WithRetry(s, RetryPolicy{})
			}
			u := &uploader{store: s, workers: 4, xfer: &Transfer{}, known: map[string]Object{}, budget: NewBudget(DefaultMemory)}
			objs, _, _, err := u.upload(ctx, bytes.NewReader(data))
			if err != nil || len(objs) != 2 {
				t.Fatalf("%d chunks: %v", len(objs), err)
			}
			got := map[string][]byte{}
			var off int64
			for _, o := range objs {
				z := ss.objs[ChunkKey(o.SHA256)]
				got[o.SHA256] = z
				if SumHex(z) != o.StoredSHA256 || int64(len(z)) != o.Stored {
					t.Fatalf("chunk %s: stored %d bytes that do not match its stored sha256", o.SHA256[:12], len(z))
				}
				for _, f := range o.FrameList() {
					b, err := Decompress(nil, z[:f.Stored], f.Size)
					if err != nil || !bytes.Equal(b, data[off:off+f.Size]) {
						t.Fatalf("frame at %d does not decode to its content (%v)", off, err)
					}
					z, off = z[f.Stored:], off+f.Size
				}
				if n := ps.pieces[ChunkKey(o.SHA256)]; tc.pieces && n != len(o.FrameList()) {
					t.Errorf("chunk %s of %d frames came in %d pieces", o.SHA256[:12], len(o.FrameList()), n)
				}
			}
			stored[tc.name] = got
		})
	}
	for name, got := range stored {
		for h, z := range stored["one buffer"] {
			if !bytes.Equal(got[h], z) {
				t.Errorf("%s: chunk %s differs from the one stored from one buffer", name, h[:12])
			}
		}
	}
}

// Pieces read as the bytes laid end to end, again after a Seek, and
// written out whole.
func TestPieces_ReadAsOneBody(t *testing.T) {
	pieces := [][]byte{[]byte("abc"), nil, []byte("defgh"), []byte("i")}
	whole := bytes.Join(pieces, nil)
	r := NewPieces(pieces)
	if r.Size() != int64(len(whole)) {
		t.Fatalf("size %d", r.Size())
	}
	for _, step := range []int{1, 2, 4, 100} {
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, step)
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, whole) {
			t.Errorf("reads of %d: %q", step, got)
		}
	}
	if at, err := r.Seek(-4, io.SeekEnd); err != nil || at != int64(len(whole))-4 {
		t.Fatalf("seek: %d %v", at, err)
	}
	var out bytes.Buffer
	if n, err := r.WriteTo(&out); err != nil || n != 4 || out.String() != "fghi" {
		t.Errorf("WriteTo from 4 before the end: %d %q %v", n, out.String(), err)
	}
	if _, err := r.Seek(-1, io.SeekStart); err == nil {
		t.Error("a seek before the start succeeded")
	}
}

// A frame that expands past its size, with or without saying so in its
// header, is refused as corrupt after decoding no more than the buffer it
// was given (anyone who can write to the bucket can store one; decoding
// it up to MaxChunkBytes took a restore minutes and hundreds of MiB), and
// an honest frame still decodes into that buffer.
func TestDecompress_AFrameThatOutgrowsItsBufferCostsNoMore(t *testing.T) {
	zeros := make([]byte, 1<<20)
	var streamed bytes.Buffer // no content size in the header
	e, err := zstd.NewWriter(&streamed)
	if err != nil {
		t.Fatal(err)
	}
	for range 256 {
		e.Write(zeros)
	}
	e.Close()
	declared := Compress(nil, make([]byte, 64<<20))
	honest := make([]byte, FrameSize)
	rand.New(rand.NewSource(1)).Read(honest[:FrameSize/2])
	z := Compress(nil, honest)

	dst := make([]byte, 0, FrameSize)
	if out, err := Decompress(dst, z, FrameSize); err != nil || !bytes.Equal(out, honest) || &out[0] != &dst[:1][0] {
		t.Fatalf("an honest frame: %v (decoded into the buffer given: %v)", err, err == nil && &out[0] == &dst[:1][0])
	}
	for name, bomb := range map[string][]byte{"streamed": streamed.Bytes(), "declared": declared} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := Decompress(dst, bomb, FrameSize)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "expands to more than") {
			t.Errorf("%s: a %d-byte frame of 256 MiB: %v, want corrupt", name, len(bomb), err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 4*FrameSize {
			t.Errorf("%s: refusing it allocated %d MiB", name, n>>20)
		}
	}
}
