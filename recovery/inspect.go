package recovery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"time"
)

// Info is a read-only report on one partition (`flowrun recovery inspect`).
type Info struct {
	Path     string         `json:"path"`
	Index    PartitionIndex `json:"index"`
	Count    PartitionCount `json:"count"`
	FlowUID  string         `json:"flow_uid"`
	FlowName string         `json:"flow_name"`
	// Lineage is the history the partition belongs to; Pending says a
	// restore laid it down and no run has adopted it yet.
	Lineage     Lineage               `json:"lineage"`
	Pending     bool                  `json:"lineage_pending,omitempty"`
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

	// Counted only when asked (InspectOptions.Count): each is a pass over
	// the partition's state. Rows are base rows plus segment entries,
	// Tombstones the segment entries that discard a key, Keys the keys a
	// resume at Hi would load.
	Counted    bool  `json:"counted"`
	Rows       int64 `json:"rows,omitempty"`
	Tombstones int64 `json:"tombstones,omitempty"`
	Keys       int64 `json:"keys,omitempty"`
	// Segments and SegmentBytes are the changelog not yet compacted.
	Segments       int64 `json:"segments"`
	SegmentBytes   int64 `json:"segment_bytes"`
	CompactedEpoch Epoch `json:"compacted_epoch"`
	Schema         int   `json:"schema"`

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

// InspectOptions say what an inspection reads.
type InspectOptions struct {
	// Count reads the partitions' state to count rows, tombstones and keys
	// (a pass over every key); without it inspection reads a few small
	// tables and is cheap at any state size.
	Count bool
}

// InspectPartition reports on p inside one read transaction.
func InspectPartition(ctx context.Context, p *Partition, o InspectOptions) (*Info, error) {
	tx, err := p.DB.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	v, err := ReadView(ctx, tx)
	if err != nil {
		return nil, err
	}
	in := &Info{Path: p.Path, Index: v.Index, Count: v.Count, FlowUID: v.FlowUID, FlowName: v.FlowName, Lineage: v.Lineage, Pending: v.Pending,
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
	if in.Schema, err = SchemaOf(ctx, tx); err != nil {
		return nil, err
	}
	if in.Schema > SchemaVersion {
		return nil, fmt.Errorf("%s has schema version %d, newer than this flowkeep (%d): upgrade flowkeep", p.Path, in.Schema, SchemaVersion)
	}
	if in.Schema != SchemaVersion {
		return nil, fmt.Errorf("%s has schema version %d; run flowrun on it once (it migrates to version %d) before inspecting it", p.Path, in.Schema, SchemaVersion)
	}
	if in.CompactedEpoch, err = metaEpoch(ctx, tx, "compacted_epoch"); err != nil {
		return nil, err
	}
	err = tx.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(length(data)), 0) FROM segments`).Scan(&in.Segments, &in.SegmentBytes)
	if err != nil {
		return nil, err
	}
	if o.Count {
		if err := countState(ctx, tx, in); err != nil {
			return nil, err
		}
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

// InspectDir reports on every partition in dir without writing to any: a
// partition with a WAL (a flow running, or crashed) is read through a
// read-only connection, which never checkpoints; one without is opened
// immutable, which creates no -wal or -shm.
func InspectDir(ctx context.Context, dir string, o InspectOptions) (*DirReport, error) {
	files, err := candidates(dir)
	if err != nil {
		return nil, err
	}
	var ps []*Partition
	for _, f := range files {
		mode := "ro"
		if st, err := os.Stat(f + "-wal"); err != nil || st.Size() == 0 {
			mode = "immutable"
		}
		p, err := openPartition(ctx, f, mode)
		if err != nil {
			closeAll(ps)
			return nil, err
		}
		if p != nil {
			ps = append(ps, p)
		}
	}
	defer closeAll(ps)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Index < ps[j].Index })
	rep := &DirReport{}
	var views []*View
	for _, p := range ps {
		in, err := InspectPartition(ctx, p, o)
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
	if rep.Problem == nil {
		// The same history checks a run makes (it would refuse them).
		_, rep.Problem = StartLineage(views, rep.Resume.Epoch, func() string { return "inspect" }, time.Now())
	}
	return rep, nil
}

// countState counts a partition's rows, tombstones and live keys.
func countState(ctx context.Context, q queryer, in *Info) error {
	var base int64
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM base`).Scan(&base); err != nil {
		return err
	}
	in.Rows = base
	err := eachSegment(ctx, q, math.MaxInt64, func(it *segmentIter) error {
		for it.next() {
			in.Rows++
			if it.cur.tomb {
				in.Tombstones++
			}
		}
		return it.err
	})
	if err != nil {
		return err
	}
	in.Counted = true
	return LoadPartition(ctx, q, in.Hi, func(rows []Row) error { in.Keys += int64(len(rows)); return nil })
}

// OldestChangeSince returns the oldest epoch at or after e in which the
// partition q reads holds a change (a segment, a base row compacted from
// one, or a dropped key's tombstone); ok is false if it holds none: every
// change is below e.
func OldestChangeSince(ctx context.Context, q queryer, e Epoch) (Epoch, bool, error) {
	var oldest sql.NullInt64
	err := q.QueryRowContext(ctx, `SELECT min(m) FROM (
		SELECT min(epoch) AS m FROM segments WHERE epoch >= ?1
		UNION ALL SELECT min(epoch) FROM base WHERE epoch >= ?1
		UNION ALL SELECT min(epoch) FROM dropped WHERE epoch >= ?1)`, int64(e)).Scan(&oldest)
	if err != nil || !oldest.Valid {
		return 0, false, err
	}
	return Epoch(oldest.Int64), true, nil
}
