package recovery

import (
	"errors"
	"testing"
)

func view(idx int, commit Epoch, exs []Execution, fronts map[ExecutionNumber]map[WorkerIndex]Epoch) *View {
	return &View{Index: PartitionIndex(idx), Count: 2, CommitEpoch: commit, Executions: exs, Fronts: fronts}
}

func TestResume(t *testing.T) {
	ex0 := Execution{Number: 0, Workers: 2, ResumeEpoch: 1}
	ex1 := Execution{Number: 1, Workers: 3, ResumeEpoch: 5}
	tests := []struct {
		name    string
		views   []*View
		want    ResumePoint
		wantErr error
	}{
		{"fresh flow", []*View{view(0, 1, nil, nil), view(1, 1, nil, nil)}, ResumePoint{0, 1}, nil},
		{"min over workers and partitions",
			[]*View{
				view(0, 1, []Execution{ex0}, map[ExecutionNumber]map[WorkerIndex]Epoch{0: {0: 7, 1: 9}}),
				view(1, 1, []Execution{ex0}, map[ExecutionNumber]map[WorkerIndex]Epoch{0: {0: 8, 1: 6}}),
			}, ResumePoint{1, 6}, nil},
		{"worker that never reported counts as the execution start",
			[]*View{
				view(0, 1, []Execution{ex0, ex1}, map[ExecutionNumber]map[WorkerIndex]Epoch{1: {0: 9, 1: 9}}),
				view(1, 1, []Execution{ex0, ex1}, map[ExecutionNumber]map[WorkerIndex]Epoch{1: {0: 9, 1: 9, 2: 9}}),
			}, ResumePoint{2, 5}, nil},
		{"partition that missed the last execution counts as its start",
			[]*View{
				view(0, 1, []Execution{ex0, ex1}, map[ExecutionNumber]map[WorkerIndex]Epoch{1: {0: 9, 1: 9, 2: 9}}),
				view(1, 1, []Execution{ex0}, map[ExecutionNumber]map[WorkerIndex]Epoch{0: {0: 12, 1: 12}}),
			}, ResumePoint{2, 5}, nil},
		{"rescale: only the last execution's workers count",
			[]*View{
				view(0, 1, []Execution{ex0, ex1}, map[ExecutionNumber]map[WorkerIndex]Epoch{0: {0: 2}, 1: {0: 11, 1: 12, 2: 10}}),
				view(1, 1, []Execution{ex0, ex1}, map[ExecutionNumber]map[WorkerIndex]Epoch{1: {0: 11, 1: 12, 2: 13}}),
			}, ResumePoint{2, 10}, nil},
		{"partition collected past the resume epoch",
			[]*View{
				view(0, 8, []Execution{ex0}, map[ExecutionNumber]map[WorkerIndex]Epoch{0: {0: 12, 1: 12}}),
				view(1, 1, []Execution{ex0}, map[ExecutionNumber]map[WorkerIndex]Epoch{0: {0: 6, 1: 6}}),
			}, ResumePoint{}, ErrTooOld},
		{"commit epoch equal to resume epoch is fine",
			[]*View{
				view(0, 6, []Execution{ex0}, map[ExecutionNumber]map[WorkerIndex]Epoch{0: {0: 12, 1: 12}}),
				view(1, 1, []Execution{ex0}, map[ExecutionNumber]map[WorkerIndex]Epoch{0: {0: 6, 1: 6}}),
			}, ResumePoint{1, 6}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Resume(tt.views)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestIntervals_D(t *testing.T) {
	for _, tt := range []struct {
		s, b string
		d    Epoch
	}{{"1s", "0s", 0}, {"1s", "1s", 1}, {"1s", "1500ms", 2}, {"10s", "5m", 30}, {"2s", "1s", 1}} {
		iv := Intervals{Snapshot: mustDur(tt.s), Backup: mustDur(tt.b)}
		if got := iv.D(); got != tt.d {
			t.Errorf("D(s=%s, b=%s) = %d, want %d", tt.s, tt.b, got, tt.d)
		}
	}
}
