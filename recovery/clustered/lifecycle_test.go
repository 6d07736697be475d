package clustered

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/flowkeep/flowkeep/internal/mesh"
	"github.com/flowkeep/flowkeep/recovery"
)

// topicFrame is a topic message as the mesh carries it.
func topicFrame(topic string, payload []byte) []byte {
	return append(append([]byte{2, byte(len(topic))}, topic...), payload...)
}

// begunAlone begins process 0 of a cluster of two over a detached mesh,
// process 1 (whose frames the test hands to Receive) having no partitions:
// process 0 owns both of the flow's.
func begunAlone(t *testing.T) (*Recovery, *mesh.Mesh) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	if err := recovery.Init(ctx, dir, 2); err != nil {
		t.Fatal(err)
	}
	m := mesh.Detached(0, 2, func(err error) { t.Errorf("the run failed: %v", err) })
	t.Cleanup(func() { m.Close(context.Background(), nil) })
	r := New([]string{dir}, recovery.Options{FlowName: "f"})
	r.Attach(m)
	found, _ := json.Marshal(foundMsg{})
	views, _ := json.Marshal(viewsMsg{Nonce: "n1"})
	for _, f := range [][]byte{
		topicFrame("$gather", append([]byte("rec.found\x00"), found...)),
		topicFrame("$gather", append([]byte("rec.views\x00"), views...)),
		topicFrame("$barrier", []byte("rec.begun")),
	} {
		if err := m.Receive(1, f); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Begin(ctx, 2); err != nil {
		t.Fatal(err)
	}
	return r, m
}

// A peer's commit that arrives after the recovery closed (the runtime
// stops the mesh's handlers first, but a handler may outlive a bounded
// wait) is refused by the closed store: no panic, and Close reports a
// clean error naming the peer.
func TestOnCommit_AfterCloseIsACleanError(t *testing.T) {
	r, m := begunAlone(t)
	rows := []recovery.Row{{Step: "s", Key: "k", Epoch: 1, Value: []byte("v")}}
	if err := m.Receive(1, topicFrame("rec.commit", encodeCommit(1, 2, rows))); err != nil {
		t.Fatalf("a commit while running: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := m.Receive(1, topicFrame("rec.commit", encodeCommit(1, 3, rows))); err != nil {
		t.Fatalf("a late commit is this process's failure, not the peer's: %v", err)
	}
	err := r.Close()
	if !errors.Is(err, recovery.ErrClosed) || !strings.Contains(err.Error(), "process 1") {
		t.Fatalf("close after a late commit: %v, want the closed store's error naming process 1", err)
	}
}
