package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
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
