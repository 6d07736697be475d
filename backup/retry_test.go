package backup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/backup/storetest"
)

// answerLost does every other successful conditional write and then
// answers it with a 503, as a proxy that forwarded the write and lost the
// response would.
type answerLost struct {
	backup.Store
	mu   sync.Mutex
	done int
	lost int
}

func (a *answerLost) PutIfMatch(ctx context.Context, key string, data []byte, v backup.ObjectVersion) (backup.ObjectVersion, error) {
	nv, err := a.Store.PutIfMatch(ctx, key, data, v)
	if err != nil {
		return nv, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done++; a.done%2 == 1 {
		a.lost++
		return "", fmt.Errorf("put %s: %w", key, errLostAnswer)
	}
	return nv, nil
}

// The retry decorator keeps the Store contract, conditional writes
// included, over a store that loses the answers of writes it did.
func TestRetry_Conformance(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		storetest.Run(t, func(*testing.T) backup.Store { return fastRetry(memstore.New()) })
	})
	var lossy []*answerLost
	t.Run("answers lost", func(t *testing.T) {
		storetest.Run(t, func(*testing.T) backup.Store {
			a := &answerLost{Store: memstore.New()}
			lossy = append(lossy, a)
			return fastRetry(a)
		})
	})
	n := 0
	for _, a := range lossy {
		n += a.lost
	}
	if n == 0 {
		t.Fatal("no answer was lost: the fault did not bite")
	}
}

// A conditional write whose answer was lost, retried: the retry meets the
// write as a conflict, reads the object back and knows it for its own. If
// another writer was first, the conflict stands; if the object cannot be
// read back, the error says so and is no conflict.
func TestRetry_PutIfMatchWhoseAnswerWasLost(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	v1, err := mem.PutIfMatch(ctx, "k", []byte("one"), "")
	if err != nil {
		t.Fatal(err)
	}
	sc := newScripted(mem)
	sc.lose = func(string, int) bool { return true }
	s := fastRetry(sc)
	v2, err := s.PutIfMatch(ctx, "k", []byte("two"), v1)
	if err != nil {
		t.Fatalf("own write, its answer lost: %v", err)
	}
	if _, cur, _ := mem.GetVersion(ctx, "k", 100); cur != v2 {
		t.Fatalf("version %q returned, %q stored", v2, cur)
	}
	// Its readback flipped in transit once: still our own.
	sc.flip = func(key string, n int) int {
		if n == 0 {
			return 1
		}
		return -1
	}
	sc.reads = map[string]int{}
	if _, err := s.PutIfMatch(ctx, "k", []byte("three"), v2); err != nil {
		t.Fatalf("own write, its answer lost, its readback flipped: %v", err)
	}
	sc.flip = nil
	// Another writer's: the conflict stands.
	sc.lose = nil
	if _, err := s.PutIfMatch(ctx, "k", []byte("four"), v1); !errors.Is(err, backup.ErrConflict) {
		t.Fatalf("another's write: %v, want ErrConflict", err)
	}
	// Lost, and the readback fails: unknown, not a conflict.
	_, v3, _ := mem.GetVersion(ctx, "k", 100)
	sc.lose = func(string, int) bool { return true }
	s = fastRetry(&failReads{Store: sc})
	_, err = s.PutIfMatch(ctx, "k", []byte("five"), v3)
	if err == nil || errors.Is(err, backup.ErrConflict) || !strings.Contains(err.Error(), "whether the write was ours") {
		t.Fatalf("own write, answer lost, unreadable: %v", err)
	}
}

type failReads struct{ backup.Store }

func (f *failReads) GetVersion(ctx context.Context, key string, limit int64) ([]byte, backup.ObjectVersion, error) {
	return nil, "", errors.New("connection reset by peer")
}

// cutBodies cuts the first cuts bodies Get returns after at bytes, as a
// dropped connection does, and counts the Gets.
type cutBodies struct {
	backup.Store
	mu   sync.Mutex
	at   int64
	cuts int
	gets int
}

func (c *cutBodies) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := c.Store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gets++
	if c.cuts == 0 {
		return rc, nil
	}
	c.cuts--
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, c.at), iotest.ErrReader(io.ErrUnexpectedEOF)), rc}, nil
}

// A sized read through the retry decorator gets the whole object even when
// bodies are cut short on the way, and reads it into the caller's buffer
// (a restore recycles them); an object larger than it may be is refused
// at the first read, not read again.
func TestRetry_SizedReadRetriesCutBodiesIntoTheCallersBuffer(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("flowkeep"), 64<<10)
	for _, tc := range []struct {
		name     string
		cuts     int
		size     int64
		wantErr  error
		wantGets int
	}{
		{"whole", 0, int64(len(data)), nil, 1},
		{"cut once", 1, int64(len(data)), nil, 2},
		{"cut three times", 3, int64(len(data)), nil, 4},
		{"cut every time", 9, int64(len(data)), io.ErrUnexpectedEOF, 4},
		{"larger than its manifest says", 0, int64(len(data)) - 1, backup.ErrCorrupt, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := memstore.New()
			if err := mem.Put(ctx, "chunks/k", data); err != nil {
				t.Fatal(err)
			}
			c := &cutBodies{Store: mem, at: int64(len(data) / 2), cuts: tc.cuts}
			dst := make([]byte, 0, len(data)+bytes.MinRead)
			s := fastRetry(c)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			got, err := backup.ReadSizedInto(ctx, s, "chunks/k", tc.size, dst)
			runtime.ReadMemStats(&after)
			if n := after.TotalAlloc - before.TotalAlloc; n > uint64(len(data))/4 {
				t.Errorf("the read allocated %d bytes for a %d-byte object: it was buffered on the way", n, len(data))
			}
			if c.gets != tc.wantGets {
				t.Errorf("%d gets, want %d", c.gets, tc.wantGets)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes (%v), want the whole %d", len(got), err, len(data))
			}
			if &got[0] != &dst[:1][0] {
				t.Error("the object was read into a new buffer, not the caller's")
			}
		})
	}
}
