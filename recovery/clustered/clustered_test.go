package clustered

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
)

func parts(uid string, count int, idx ...int) []found {
	var out []found
	for _, i := range idx {
		out = append(out, found{Index: i, Count: count, UID: uid, Path: fmt.Sprint("p", i)})
	}
	return out
}

func TestAssign(t *testing.T) {
	tests := []struct {
		name    string
		reach   map[int][]found
		procs   int
		want    string
		wantErr error
	}{
		{"each reaches its own", map[int][]found{0: parts("u", 4, 0, 1), 1: parts("u", 4, 2, 3)}, 2, "[0 0 1 1]", nil},
		{"shared directory spreads evenly", map[int][]found{0: parts("u", 4, 0, 1, 2, 3), 1: parts("u", 4, 0, 1, 2, 3)}, 2, "[0 1 0 1]", nil},
		{"one process reaches all", map[int][]found{0: parts("u", 3, 0, 1, 2), 1: nil, 2: nil}, 3, "[0 0 0]", nil},
		{"scarce partitions choose first", map[int][]found{0: parts("u", 3, 0, 1, 2), 1: parts("u", 3, 0)}, 2, "[1 0 0]", nil},
		{"unreachable partition", map[int][]found{0: parts("u", 4, 0, 1), 1: parts("u", 4, 3)}, 2, "", recovery.ErrMissingPartitions},
		{"two flows", map[int][]found{0: parts("u", 2, 0), 1: parts("v", 2, 1)}, 2, "", recovery.ErrForeignFlow},
		{"mixed counts", map[int][]found{0: parts("u", 2, 0), 1: parts("u", 3, 1)}, 2, "", recovery.ErrMixedPartitions},
		{"nothing anywhere", map[int][]found{0: nil, 1: nil}, 2, "", recovery.ErrNoPartitions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			owners, _, err := assign(tt.reach, tt.procs, "wc", "dir")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && fmt.Sprint(owners) != tt.want {
				t.Fatalf("owners %v, want %s", owners, tt.want)
			}
		})
	}
}

func TestCommitEncoding_RoundTrip(t *testing.T) {
	rows := []recovery.Row{{Step: "s", Key: "k", Epoch: 3, Value: []byte("v")}, {Step: "s", Key: "gone", Epoch: 4}, {Step: "t", Key: "", Epoch: 5, Value: []byte{}}}
	w, f, got, err := decodeCommit(encodeCommit(2, 9, rows))
	if err != nil || w != 2 || f != 9 || len(got) != 3 || got[1].Value != nil || got[2].Value == nil || string(got[0].Value) != "v" {
		t.Fatalf("%d %d %+v %v", w, f, got, err)
	}
	if _, _, _, err := decodeCommit([]byte{1, 2, 0xff}); err == nil {
		t.Fatal("garbage accepted")
	}
}

// testOnDemand is process 0 of procs with state opened, owning partitions
// 0 and 1 of 4 (process 1 the others), for tests of its handlers.
func testOnDemand(procs int) *OnDemand {
	r := &Recovery{owners: []int{0, 0, 1, 1}, count: 4, risen: make(chan struct{}), mesh: fakeMesh{procs}}
	o := r.OnDemand()
	o.reads.opened, o.reads.full = true, true
	o.reads.owning = []int{0, 1}
	o.reads.written = [][]uint64{make([]uint64, 2), make([]uint64, 2)}
	return o
}

// fakeMesh is what the handlers ask of a mesh: who they are.
type fakeMesh struct{ procs int }

func (m fakeMesh) Self() int      { return 0 }
func (m fakeMesh) Processes() int { return m.procs }
func (fakeMesh) Send(context.Context, int, string, []byte) error {
	return fmt.Errorf("not connected")
}
func (fakeMesh) Handle(string, func(int, []byte) error) {}
func (fakeMesh) Barrier(context.Context, string) error  { return nil }
func (fakeMesh) Gather(context.Context, string, []byte) (map[int][]byte, error) {
	return nil, fmt.Errorf("not connected")
}

// What a peer may not make this process do with lookup and scan messages:
// each is refused (and so fails the run, naming the peer), never acted on.
func TestOnDemand_RefusesPeerMessages(t *testing.T) {
	tests := []struct {
		name string
		send func(o *OnDemand) error
		want string
	}{
		{"a reply to a request never sent", func(o *OnDemand) error {
			return o.onReply(1, frame(7, flagLast, nil))
		}, "never sent"},
		{"a reply from another process than asked", func(o *OnDemand) error {
			id, _ := o.reads.newCall(1)
			return o.onReply(0, frame(id, flagLast, nil))
		}, "sent to process 1"},
		{"a reply with unknown flags", func(o *OnDemand) error {
			id, _ := o.reads.newCall(1)
			return o.onReply(1, frame(id, 0x80, nil))
		}, "unknown flags"},
		{"counts of more workers than the run has", func(o *OnDemand) error {
			return o.onWritten(1, []byte{1, 2, 3})
		}, "more than 2 workers"},
		{"a lookup of a key this process does not own", func(o *OnDemand) error {
			var key core.StateKey
			for i := 0; ; i++ {
				key = core.StateKey(fmt.Sprint("k", i))
				if o.owners[recovery.PartitionFor("s", key, 4)] == 1 {
					break
				}
			}
			b := binary.AppendUvarint(nil, 1)
			b = appendBytes(b, []byte("s"))
			b = binary.AppendUvarint(b, 1)
			b = appendBytes(b, []byte(key))
			return o.onRead(1, b)
		}, "which process 1 owns"},
		{"a lookup of more keys than it holds", func(o *OnDemand) error {
			b := binary.AppendUvarint(nil, 1)
			b = appendBytes(b, []byte("s"))
			b = binary.AppendUvarint(b, 1000)
			return o.onRead(1, b)
		}, "malformed lookup request"},
		{"a scan for a worker beyond the count", func(o *OnDemand) error {
			return o.onScan(1, scanRequest{id: 1, step: "s", share: core.KeyShare{Worker: 3, Workers: 3}}.encode())
		}, "malformed scan request"},
		{"more pages than it read", func(o *OnDemand) error {
			s := &scanSession{credit: make(chan struct{}, 2), stop: make(chan struct{})}
			s.credit <- struct{}{}
			s.credit <- struct{}{}
			o.reads.served[servedKey{1, 9}] = s
			return o.onScanMore(1, binary.AppendUvarint(nil, 9))
		}, "more pages of a scan than it read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.send(testOnDemand(2))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to say %q", err, tt.want)
			}
		})
	}
}

// A scan page out of key order, or a key two processes both hand over, is
// an error, not a visit of a key twice.
func TestScanSource_RefusesPagesOutOfOrder(t *testing.T) {
	page := appendScanRow(appendScanRow(nil, "b", 2, []byte("x")), "a", 3, nil)
	src := &scanSource{from: 1, next: func() (byte, []byte, error) { return flagLast, page, nil }}
	if ok, err := src.advance(); !ok || err != nil || string(src.key) != "b" {
		t.Fatalf("first row: %v %v %q", ok, err, src.key)
	}
	if _, err := src.advance(); err == nil || !strings.Contains(err.Error(), "out of key order") {
		t.Fatalf("second row out of order: %v", err)
	}
}
