package recovery

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/internal/fsync"
	"github.com/flowkeep/flowkeep/internal/machine"
)

// Init creates n partitions part-0.sqlite3 … in the existing directory dir.
// It refuses a directory that already holds partitions (or files named like
// them). Each file is built under a temporary name and renamed into place
// after an fsync, so a crash never leaves a half-made partition under a
// partition's name.
func Init(ctx context.Context, dir string, n int) error {
	if n < 1 {
		return fmt.Errorf("partition count must be at least 1, got %d", n)
	}
	files, err := candidates(dir)
	if err != nil {
		return err
	}
	for _, f := range files {
		p, err := OpenPartition(ctx, f, true)
		if err != nil {
			return fmt.Errorf("%w: %s is unreadable (%v); move it away first", ErrAlreadyInit, f, err)
		}
		if p != nil {
			p.Close()
			return fmt.Errorf("%w: %s is partition %d of %d; use another directory, or remove the old flow's partitions first", ErrAlreadyInit, f, p.Index, p.Count)
		}
		if strings.HasPrefix(filepath.Base(f), "part-") {
			return fmt.Errorf("%w: %s exists; remove it first", ErrAlreadyInit, f)
		}
	}
	all := make([]PartitionIndex, n)
	for i := range all {
		all[i] = PartitionIndex(i)
	}
	return CreatePartitions(ctx, dir, NewFlowUID(), PartitionCount(n), all)
}

// NewFlowUID is a new flow's random uid (also the id of its root lineage).
func NewFlowUID() string { return NewLineageID() }

// CreatePartitions creates the partitions idx of a flow of count partitions
// with uid in the existing directory dir, as part-I.sqlite3, each with the
// flow's root lineage. The processes of a cluster each create their share of
// one flow this way, under the uid they agreed on. It refuses an index whose
// file name is taken; the caller checks that no other file holds the index
// (PlanInit). Each file is built under a temporary name and renamed into
// place after an fsync, then the directory is fsynced.
func CreatePartitions(ctx context.Context, dir, uid string, count PartitionCount, idx []PartitionIndex) error {
	if count < 1 {
		return fmt.Errorf("partition count must be at least 1, got %d", count)
	}
	if st, err := os.Stat(dir); err != nil {
		return fmt.Errorf("recovery directory: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("recovery directory %s is not a directory", dir)
	}
	now := time.Now()
	for _, i := range idx {
		if i < 0 || PartitionIndex(count) <= i {
			return fmt.Errorf("partition index %d is not one of %d", i, count)
		}
		final := filepath.Join(dir, fmt.Sprintf("part-%d.sqlite3", i))
		if _, err := os.Lstat(final); err == nil {
			return fmt.Errorf("%w: %s exists; remove it first", ErrAlreadyInit, final)
		}
		if err := createPartition(ctx, final, i, count, uid, now); err != nil {
			return fmt.Errorf("create partition %d: %w", i, err)
		}
	}
	return fsync.Dir(dir)
}

// Found is what a process found of a flow's partitions before it starts,
// for PlanInit.
type Found struct {
	Index   PartitionIndex `json:"index"`
	Count   PartitionCount `json:"count"`
	FlowUID string         `json:"uid"`
	// Fresh: no run ever began the partition (and no restore laid it down).
	Fresh bool `json:"fresh"`
}

// FoundOf describes an open partition for PlanInit.
func FoundOf(ctx context.Context, p *Partition) (Found, error) {
	v, err := ReadView(ctx, p.DB)
	if err != nil {
		return Found{}, fmt.Errorf("%s: %w", p.Path, err)
	}
	return Found{Index: p.Index, Count: p.Count, FlowUID: p.FlowUID, Fresh: len(v.Executions) == 0 && !v.Pending}, nil
}

// PlanInit decides what a run told to create n partitions when there are
// none (flowrun run --init-partitions n) does, given every partition the
// flow's processes found: with none, it creates all n under proposed (a new
// flow uid); with a complete set of n, nothing. A set of another count is
// refused (the count is fixed for the life of a flow). An incomplete set is
// completed only if no run ever began any of its partitions (a first start
// that crashed while creating them): otherwise the missing partitions hold
// state that only a restore can bring back, and it is refused.
func PlanInit(found []Found, n PartitionCount, proposed string) (uid string, create []PartitionIndex, err error) {
	if n < 1 {
		return "", nil, fmt.Errorf("the partition count to create must be at least 1, got %d", n)
	}
	if len(found) == 0 {
		for i := 0; i < int(n); i++ {
			create = append(create, PartitionIndex(i))
		}
		return proposed, create, nil
	}
	uid, count := found[0].FlowUID, found[0].Count
	have := map[PartitionIndex]bool{}
	fresh := true
	for _, f := range found {
		if f.Count != count {
			return "", nil, fmt.Errorf("%w: partition %d is one of %d, partition %d one of %d", ErrMixedPartitions, found[0].Index, count, f.Index, f.Count)
		}
		if f.FlowUID != uid {
			return "", nil, fmt.Errorf("%w: partition %d belongs to flow %s, partition %d to flow %s; keep one flow's partitions", ErrForeignFlow, found[0].Index, uid, f.Index, f.FlowUID)
		}
		have[f.Index] = true
		fresh = fresh && f.Fresh
	}
	if count != n {
		return "", nil, fmt.Errorf("%w: asked to create %d partitions, but the recovery directories already hold partitions of a flow of %d (the count is fixed for the life of a flow): pass --init-partitions %d, or move the old partitions away to start a new flow", ErrMixedPartitions, n, count, count)
	}
	for i := 0; i < int(n); i++ {
		if !have[PartitionIndex(i)] {
			create = append(create, PartitionIndex(i))
		}
	}
	if len(create) > 0 && !fresh {
		var miss []string
		for _, i := range create {
			miss = append(miss, fmt.Sprint(i))
		}
		return "", nil, fmt.Errorf("%w: partitions %s of %d are missing, and the others have run: they hold state only a restore can bring back (flowbackup restore); --init-partitions creates partitions only for a flow that never ran", ErrMissingPartitions, strings.Join(miss, ", "), n)
	}
	return uid, create, nil
}

// EnsurePartitions makes the single process's recovery directories hold the
// n partitions of one flow: on a first start (no partitions) it creates them
// with a new flow uid, spread over dirs in turn (partition i in
// dirs[i mod len(dirs)]). It returns the indexes it created (none when the
// partitions were there); see PlanInit for what it refuses.
func EnsurePartitions(ctx context.Context, dirs []string, n int) ([]PartitionIndex, error) {
	ps, err := FindDirs(ctx, dirs, true)
	if err != nil {
		return nil, err
	}
	var found []Found
	for _, p := range ps {
		f, err := FoundOf(ctx, p)
		if err != nil {
			CloseAll(ps)
			return nil, err
		}
		found = append(found, f)
	}
	CloseAll(ps)
	uid, create, err := PlanInit(found, PartitionCount(n), NewFlowUID())
	if err != nil || len(create) == 0 {
		return nil, err
	}
	byDir := map[string][]PartitionIndex{}
	for _, i := range create {
		d := dirs[int(i)%len(dirs)]
		byDir[d] = append(byDir[d], i)
	}
	for _, d := range dirs {
		if len(byDir[d]) == 0 {
			continue
		}
		if err := CreatePartitions(ctx, d, uid, PartitionCount(n), byDir[d]); err != nil {
			return nil, err
		}
	}
	return create, nil
}

func createPartition(ctx context.Context, final string, idx PartitionIndex, n PartitionCount, uid string, now time.Time) error {
	tmp := final + ".init-tmp"
	os.Remove(tmp)
	db, err := OpenDB(tmp, false)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return err
	}
	root, err := json.Marshal(RootLineage(uid, machine.Host(), now, LineageInit))
	if err != nil {
		db.Close()
		return err
	}
	_, err = db.ExecContext(ctx, `INSERT INTO parts (part_index, part_count, flow_uid, created_unix_ms) VALUES (?, ?, ?, ?)`, idx, n, uid, unixMs(now))
	if err == nil {
		_, err = db.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('commit_epoch', '1'), (?, ?)`, metaLineage, string(root))
	}
	if err != nil {
		db.Close()
		return err
	}
	// Closing the last connection checkpoints and removes the -wal.
	if err := db.Close(); err != nil {
		return err
	}
	if err := fsync.File(tmp); err != nil {
		return err
	}
	if _, err := os.Stat(final); err == nil {
		return fmt.Errorf("%w: %s appeared meanwhile", ErrAlreadyInit, final)
	}
	return os.Rename(tmp, final)
}
