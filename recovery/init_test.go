package recovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlanInit(t *testing.T) {
	fresh := func(uid string, count int, idx ...int) []Found {
		var out []Found
		for _, i := range idx {
			out = append(out, Found{Index: PartitionIndex(i), Count: PartitionCount(count), FlowUID: uid, Fresh: true})
		}
		return out
	}
	ran := func(fs []Found) []Found {
		for i := range fs {
			fs[i].Fresh = false
		}
		return fs
	}
	tests := []struct {
		name    string
		found   []Found
		n       int
		uid     string
		create  string
		wantErr error
	}{
		{"first start creates all under the proposal", nil, 3, "new", "[0 1 2]", nil},
		{"a complete set: nothing", ran(fresh("u", 3, 0, 1, 2)), 3, "u", "[]", nil},
		{"a complete set seen twice (shared directory)", ran(fresh("u", 2, 0, 1, 0, 1)), 2, "u", "[]", nil},
		{"another count is refused", ran(fresh("u", 4, 0, 1, 2, 3)), 3, "", "", ErrMixedPartitions},
		{"another count is refused even before a run", fresh("u", 4, 0, 1, 2, 3), 3, "", "", ErrMixedPartitions},
		{"a crashed first start is completed under its uid", fresh("u", 4, 0, 2), 4, "u", "[1 3]", nil},
		{"missing partitions of a flow that ran are refused", append(ran(fresh("u", 4, 0)), fresh("u", 4, 2)...), 4, "", "", ErrMissingPartitions},
		{"two flows are refused", append(fresh("u", 2, 0), fresh("v", 2, 1)...), 2, "", "", ErrForeignFlow},
		{"mixed counts are refused", append(fresh("u", 2, 0), fresh("u", 3, 1)...), 2, "", "", ErrMixedPartitions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uid, create, err := PlanInit(tt.found, PartitionCount(tt.n), "new")
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if uid != tt.uid || fmt.Sprint(create) != tt.create {
				t.Fatalf("uid %q create %v, want %q %s", uid, create, tt.uid, tt.create)
			}
		})
	}
	if _, _, err := PlanInit(nil, 0, "new"); err == nil {
		t.Fatal("a count of 0 was accepted")
	}
}

// A first start creates the partitions (one flow, with its root lineage),
// later starts create nothing, and a start told another count is refused
// with the count the partitions have.
func TestEnsurePartitions_FirstStartOnlyAndCountMustMatch(t *testing.T) {
	ctx := context.Background()
	a, b := t.TempDir(), t.TempDir()
	created, err := EnsurePartitions(ctx, []string{a, b}, 3)
	if err != nil || fmt.Sprint(created) != "[0 1 2]" {
		t.Fatalf("created %v, %v", created, err)
	}
	for dir, names := range map[string][]string{a: {"part-0.sqlite3", "part-2.sqlite3"}, b: {"part-1.sqlite3"}} {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				t.Fatalf("partitions are spread over the directories in turn: %v", err)
			}
		}
	}
	ps, err := DiscoverDirs(ctx, []string{a, b}, true, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		v, err := ReadView(ctx, p.DB)
		if err != nil || v.Lineage.ID != p.FlowUID || p.FlowUID != ps[0].FlowUID {
			t.Fatalf("partition %d: uid %s lineage %q (%v)", p.Index, p.FlowUID, v.Lineage.ID, err)
		}
	}
	CloseAll(ps)
	if created, err := EnsurePartitions(ctx, []string{a, b}, 3); err != nil || len(created) != 0 {
		t.Fatalf("second start created %v, %v", created, err)
	}
	_, err = EnsurePartitions(ctx, []string{a, b}, 4)
	if !errors.Is(err, ErrMixedPartitions) || !strings.Contains(err.Error(), "--init-partitions 3") {
		t.Fatalf("another count: %v", err)
	}
	// A first start that crashed after some of its partitions: the rest
	// are made under the same uid.
	os.Remove(filepath.Join(b, "part-1.sqlite3"))
	if created, err := EnsurePartitions(ctx, []string{a, b}, 3); err != nil || fmt.Sprint(created) != "[1]" {
		t.Fatalf("completing a crashed first start: %v, %v", created, err)
	}
	ps, err = DiscoverDirs(ctx, []string{a, b}, true, "")
	if err != nil {
		t.Fatalf("the completed set is not one flow: %v", err)
	}
	CloseAll(ps)
}

// Init refuses a directory that holds partitions; CreatePartitions refuses a
// taken file name.
func TestCreatePartitions_RefusesATakenName(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t, 2)
	err := CreatePartitions(ctx, dir, NewFlowUID(), 2, []PartitionIndex{1})
	if !errors.Is(err, ErrAlreadyInit) {
		t.Fatalf("err = %v", err)
	}
	if err := CreatePartitions(ctx, t.TempDir(), NewFlowUID(), 2, []PartitionIndex{2}); err == nil {
		t.Fatal("an index beyond the count was accepted")
	}
}
