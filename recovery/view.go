package recovery

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Execution is one recorded run.
type Execution struct {
	Number      ExecutionNumber `json:"number"`
	Workers     int             `json:"workers"`
	ResumeEpoch Epoch           `json:"resume_epoch"`
	Started     time.Time       `json:"started"`
	Intervals   Intervals       `json:"intervals"`
}

// View is what a partition says about the flow's progress: the input of the
// resume calculation and of backups' restorable ranges.
type View struct {
	Index       PartitionIndex                            `json:"index"`
	Count       PartitionCount                            `json:"count"`
	FlowUID     string                                    `json:"flow_uid"`
	FlowName    string                                    `json:"flow_name"`
	CommitEpoch Epoch                                     `json:"commit_epoch"`
	Executions  []Execution                               `json:"executions"`
	Fronts      map[ExecutionNumber]map[WorkerIndex]Epoch `json:"fronts"`
	Intervals   Intervals                                 `json:"intervals"`
	// Lineage is the history the partition belongs to; Pending says a
	// restore laid it down and no run has adopted it yet.
	Lineage Lineage `json:"lineage"`
	Pending bool    `json:"lineage_pending,omitempty"`
	// Machine and FileID are where the last run found the file (see
	// moved); Moved, set by the process that opened the file, says why it
	// may not be that file any more.
	Machine string `json:"machine,omitempty"`
	FileID  string `json:"file_id,omitempty"`
	Moved   string `json:"moved,omitempty"`
	// LastTime is when the partition's newest recorded epoch closed.
	LastTime time.Time `json:"last_time,omitzero"`
	// Runs are the partition's recent runs (see Run).
	Runs []Run `json:"runs,omitempty"`
}

// Last returns the last recorded execution, or nil.
func (v *View) Last() *Execution {
	if len(v.Executions) == 0 {
		return nil
	}
	return &v.Executions[len(v.Executions)-1]
}

// frontierOf is the resume epoch of execution ex as this partition sees it:
// the minimum over ex's workers of their highest frontier, a worker without
// one counting as ex's resume epoch.
func (v *View) frontierOf(ex Execution) Epoch {
	r := Epoch(0)
	for w := 0; w < ex.Workers; w++ {
		f, ok := v.Fronts[ex.Number][WorkerIndex(w)]
		if !ok || f < ex.ResumeEpoch {
			f = ex.ResumeEpoch
		}
		if r == 0 || f < r {
			r = f
		}
	}
	if r == 0 {
		r = ex.ResumeEpoch
	}
	return r
}

// Hi is the highest epoch this partition alone can be resumed at: its view
// of the last execution's frontier (1 for a fresh flow).
func (v *View) Hi() Epoch {
	if ex := v.Last(); ex != nil {
		return v.frontierOf(*ex)
	}
	return 1
}

// Lo is the lowest epoch this partition can be resumed at: its commit epoch.
func (v *View) Lo() Epoch { return max(v.CommitEpoch, 1) }

// ReadView reads a partition's view through q (a DB, or a transaction for a
// consistent view).
func ReadView(ctx context.Context, q queryer) (*View, error) {
	v := &View{Fronts: map[ExecutionNumber]map[WorkerIndex]Epoch{}}
	var created int64
	if err := q.QueryRowContext(ctx, `SELECT part_index, part_count, flow_uid, created_unix_ms FROM parts`).Scan(&v.Index, &v.Count, &v.FlowUID, &created); err != nil {
		return nil, fmt.Errorf("read parts: %w", err)
	}
	var err error
	if v.Lineage, v.Pending, err = readLineage(ctx, q, v.FlowUID, time.UnixMilli(created)); err != nil {
		return nil, err
	}
	if v.Machine, err = metaValue(ctx, q, metaMachine); err != nil {
		return nil, err
	}
	if v.FileID, err = metaValue(ctx, q, metaFileID); err != nil {
		return nil, err
	}
	if v.Runs, err = readRuns(ctx, q); err != nil {
		return nil, err
	}
	var last sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT max(unix_ms) FROM epoch_times`).Scan(&last); err != nil {
		return nil, fmt.Errorf("read epoch times: %w", err)
	}
	if last.Valid {
		v.LastTime = time.UnixMilli(last.Int64).UTC()
	}
	if v.FlowName, err = metaValue(ctx, q, "flow_name"); err != nil {
		return nil, err
	}
	if v.CommitEpoch, err = metaEpoch(ctx, q, "commit_epoch"); err != nil {
		return nil, err
	}
	rows, err := q.QueryContext(ctx, `SELECT ex_num, worker_count, resume_epoch, started_unix_ms, snapshot_interval_ms, backup_interval_ms FROM executions ORDER BY ex_num`)
	if err != nil {
		return nil, fmt.Errorf("read executions: %w", err)
	}
	for rows.Next() {
		var ex Execution
		var started, s, b int64
		if err := rows.Scan(&ex.Number, &ex.Workers, &ex.ResumeEpoch, &started, &s, &b); err != nil {
			rows.Close()
			return nil, err
		}
		ex.Started = time.UnixMilli(started).UTC()
		ex.Intervals = Intervals{Snapshot: time.Duration(s) * time.Millisecond, Backup: time.Duration(b) * time.Millisecond}
		v.Executions = append(v.Executions, ex)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if ex := v.Last(); ex != nil {
		v.Intervals = ex.Intervals
	}
	rows, err = q.QueryContext(ctx, `SELECT ex_num, worker_index, frontier FROM fronts`)
	if err != nil {
		return nil, fmt.Errorf("read frontiers: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var ex ExecutionNumber
		var w WorkerIndex
		var f Epoch
		if err := rows.Scan(&ex, &w, &f); err != nil {
			return nil, err
		}
		if v.Fronts[ex] == nil {
			v.Fronts[ex] = map[WorkerIndex]Epoch{}
		}
		v.Fronts[ex][w] = f
	}
	return v, rows.Err()
}

// ResumePoint is where the next execution starts.
type ResumePoint struct {
	Execution ExecutionNumber
	Epoch     Epoch
}

// Resume computes the next execution number and its resume epoch from every
// partition's view, or explains why the flow cannot be resumed without data
// loss (ErrTooOld). The views must form a complete set (see Discover).
func Resume(views []*View) (ResumePoint, error) {
	var last *Execution
	for _, v := range views {
		if ex := v.Last(); ex != nil && (last == nil || ex.Number > last.Number) {
			last = ex
		}
	}
	if last == nil {
		return ResumePoint{Execution: 0, Epoch: 1}, nil
	}
	r := Epoch(0)
	for _, v := range views {
		f := last.ResumeEpoch
		if l := v.Last(); l != nil && l.Number == last.Number {
			f = v.frontierOf(*l)
		}
		if r == 0 || f < r {
			r = f
		}
	}
	var old []string
	sort.Slice(views, func(i, j int) bool { return views[i].Index < views[j].Index })
	for _, v := range views {
		if v.Lo() > r {
			old = append(old, fmt.Sprintf("partition %d (kept from epoch %d)", v.Index, v.Lo()))
		}
	}
	if len(old) > 0 {
		return ResumePoint{}, fmt.Errorf("%w: %s too old to resume from epoch %d without data loss: restore a newer backup of the other partitions or an older one of these",
			ErrTooOld, strings.Join(old, ", "), r)
	}
	return ResumePoint{Execution: last.Number + 1, Epoch: r}, nil
}
