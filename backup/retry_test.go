package backup_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

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
