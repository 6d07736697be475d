package recovery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"
)

// Info is a read-only report on one partition (`flowrun recovery inspect`).
type Info struct {
	Path        string                `json:"path"`
	Index       PartitionIndex        `json:"index"`
	Count       PartitionCount        `json:"count"`
	FlowUID     string                `json:"flow_uid"`
	FlowName    string                `json:"flow_name"`
	Executions  []Execution           `json:"executions"`
	Frontiers   map[WorkerIndex]Epoch `json:"frontiers"` // of the last execution
	CommitEpoch Epoch                 `json:"commit_epoch"`
	// Restorable range: this partition can be resumed at any epoch in [Lo, Hi].
	Lo     Epoch     `json:"lo"`
	Hi     Epoch     `json:"hi"`
	LoTime time.Time `json:"lo_time"`
	HiTime time.Time `json:"hi_time"`

	SnapshotInterval time.Duration `json:"snapshot_interval_ns"`
	BackupInterval   time.Duration `json:"backup_interval_ns"`

	Rows       int64 `json:"rows"`
	Tombstones int64 `json:"tombstones"`
	Keys       int64 `json:"keys"`

	FileBytes int64 `json:"file_bytes"`
	WALBytes  int64 `json:"wal_bytes"`
	SHMBytes  int64 `json:"shm_bytes"`
}

// EpochTime returns when q's partition reached frontier e: the time recorded
// for the first epoch at or after e (zero if none is recorded).
func EpochTime(ctx context.Context, q queryer, e Epoch) (time.Time, error) {
	var ms int64
	err := q.QueryRowContext(ctx, `SELECT unix_ms FROM epoch_times WHERE epoch >= ? ORDER BY epoch LIMIT 1`, e).Scan(&ms)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(ms).UTC(), nil
}

// InspectPartition reports on p inside one read transaction.
func InspectPartition(ctx context.Context, p *Partition) (*Info, error) {
	tx, err := p.DB.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	v, err := ReadView(ctx, tx)
	if err != nil {
		return nil, err
	}
	in := &Info{Path: p.Path, Index: v.Index, Count: v.Count, FlowUID: v.FlowUID, FlowName: v.FlowName,
		Executions: v.Executions, CommitEpoch: v.CommitEpoch, Lo: v.Lo(), Hi: v.Hi(),
		SnapshotInterval: v.Intervals.Snapshot, BackupInterval: v.Intervals.Backup}
	if ex := v.Last(); ex != nil {
		in.Frontiers = v.Fronts[ex.Number]
	}
	if in.LoTime, err = EpochTime(ctx, tx, in.Lo); err != nil {
		return nil, err
	}
	if in.HiTime, err = EpochTime(ctx, tx, in.Hi); err != nil {
		return nil, err
	}
	err = tx.QueryRowContext(ctx, `SELECT count(*), count(*) - count(ser) FROM snaps`).Scan(&in.Rows, &in.Tombstones)
	if err != nil {
		return nil, err
	}
	err = tx.QueryRowContext(ctx, `SELECT count(*) FROM (SELECT 1 FROM snaps NOT INDEXED GROUP BY step_id, state_key)`).Scan(&in.Keys)
	if err != nil {
		return nil, err
	}
	in.FileBytes = fileSize(p.Path)
	in.WALBytes = fileSize(p.Path + "-wal")
	in.SHMBytes = fileSize(p.Path + "-shm")
	return in, nil
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// DirReport is what InspectDir found in a directory.
type DirReport struct {
	// Partitions reports on every partition found, by index.
	Partitions []*Info
	// Resume is where the next run would resume, if Problem is nil.
	Resume ResumePoint
	// Problem says why the partitions do not form one resumable flow (nil
	// if they do): a finding, not a failure of the inspection.
	Problem error
}

// InspectDir reports on every partition in dir without writing to any.
func InspectDir(ctx context.Context, dir string) (*DirReport, error) {
	ps, err := discoverAny(ctx, dir, true)
	if err != nil {
		return nil, err
	}
	defer closeAll(ps)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Index < ps[j].Index })
	rep := &DirReport{}
	var views []*View
	for _, p := range ps {
		in, err := InspectPartition(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("inspect %s: %w", p.Path, err)
		}
		rep.Partitions = append(rep.Partitions, in)
		v, err := ReadView(ctx, p.DB)
		if err != nil {
			return nil, err
		}
		views = append(views, v)
	}
	rep.Problem = checkSet(ctx, dir, ps, "")
	if rep.Problem == nil {
		rep.Resume, rep.Problem = Resume(views)
	}
	return rep, nil
}
