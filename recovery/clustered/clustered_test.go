package clustered

import (
	"errors"
	"fmt"
	"testing"

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
