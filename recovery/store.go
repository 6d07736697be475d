package recovery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Options configure a Store.
type Options struct {
	// FlowName is the name of the flow being run; partitions that recorded
	// another name are refused, and a fresh set records this one.
	FlowName string
	// Intervals are recorded with each execution and drive GC.
	Intervals Intervals
	// Now returns wall time (tests may fix it); nil means time.Now.
	Now func() time.Time
	// Global, if set, returns the frontier durable in every partition of
	// the flow, including partitions other processes own; GC never passes
	// it. Without it the store's own partitions are all there are.
	Global func() Epoch
	// OnCommitted, if set, is told when a partition's committed frontier
	// (its minimum over the execution's workers) rises.
	OnCommitted func(PartitionIndex, Epoch)
}

// Store writes one flow's snapshots into its partitions. Create it with
// Open, call Begin once, Load, then Commit as epochs close, then Close.
type Store struct {
	opts  Options
	parts []*Partition // the partitions this store writes (all, or a process's share)
	count PartitionCount
	byIdx map[PartitionIndex]int // partition index -> position in parts

	ex      ExecutionNumber
	start   Epoch
	workers int

	writers []*writer
	wg      sync.WaitGroup

	mu     sync.Mutex
	err    error
	fronts [][]Epoch // committed frontier per partition and worker
}

// Open discovers and opens the partitions in dir for writing.
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	return OpenDirs(ctx, []string{dir}, opts)
}

// OpenDirs is Open over partitions spread across several directories.
func OpenDirs(ctx context.Context, dirs []string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ps, err := DiscoverDirs(ctx, dirs, false, opts.FlowName)
	if err != nil {
		return nil, err
	}
	return NewStore(ps, ps[0].Count, opts), nil
}

// NewStore writes the given open partitions, some or all of a flow of
// count partitions (a cluster process owns a share).
func NewStore(ps []*Partition, count PartitionCount, opts Options) *Store {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{opts: opts, parts: ps, count: count, byIdx: map[PartitionIndex]int{}}
	for i, p := range ps {
		s.byIdx[p.Index] = i
	}
	return s
}

// Views reads what each of the store's partitions says about the flow.
func (s *Store) Views(ctx context.Context) ([]*View, error) {
	views := make([]*View, len(s.parts))
	for i, p := range s.parts {
		v, err := ReadView(ctx, p.DB)
		if err != nil {
			return nil, fmt.Errorf("partition %d: %w", p.Index, err)
		}
		views[i] = v
	}
	return views, nil
}

// Partitions returns the open partitions, by index.
func (s *Store) Partitions() []*Partition { return s.parts }

// Begin records a new execution with `workers` workers and returns its
// number and resume epoch. Rows at or after the resume epoch are deleted
// first: their epochs run again.
func (s *Store) Begin(ctx context.Context, workers int) (ResumePoint, error) {
	if workers < 1 {
		return ResumePoint{}, fmt.Errorf("workers must be at least 1")
	}
	views, err := s.Views(ctx)
	if err != nil {
		return ResumePoint{}, err
	}
	rp, err := Resume(views)
	if err != nil {
		return ResumePoint{}, err
	}
	return rp, s.BeginAt(ctx, rp, workers)
}

// BeginAt records execution rp on the store's partitions (the resume point
// was computed from every partition's view, possibly across processes) and
// starts the writers.
func (s *Store) BeginAt(ctx context.Context, rp ResumePoint, workers int) error {
	if workers < 1 {
		return fmt.Errorf("workers must be at least 1")
	}
	now := unixMs(s.opts.Now())
	for _, p := range s.parts {
		if err := s.beginPartition(ctx, p, rp, workers, now); err != nil {
			return fmt.Errorf("begin execution %d on partition %d: %w", rp.Execution, p.Index, err)
		}
	}
	s.ex, s.start, s.workers = rp.Execution, rp.Epoch, workers
	s.fronts = make([][]Epoch, len(s.parts))
	for i := range s.fronts {
		s.fronts[i] = make([]Epoch, workers)
		for w := range s.fronts[i] {
			s.fronts[i][w] = rp.Epoch
		}
	}
	s.writers = make([]*writer, len(s.parts))
	for i, p := range s.parts {
		ce, err := metaEpoch(ctx, p.DB, "commit_epoch")
		if err != nil {
			return err
		}
		w := &writer{s: s, p: p, idx: i, ch: make(chan submission, 16), commit: max(ce, 1), frontier: rp.Epoch,
			front: make([]Epoch, workers)}
		if err := p.DB.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM changelog`).Scan(&w.seq); err != nil {
			return err
		}
		for j := range w.front {
			w.front[j] = rp.Epoch
		}
		s.writers[i] = w
		s.wg.Add(1)
		go w.loop()
	}
	return nil
}

func (s *Store) beginPartition(ctx context.Context, p *Partition, rp ResumePoint, workers int, now int64) error {
	tx, err := p.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	sb := s.opts.Intervals
	if err := trimFrom(ctx, tx, rp.Epoch); err != nil {
		return fmt.Errorf("delete rows at or after the resume epoch: %w", err)
	}
	stmts := []struct {
		q    string
		args []any
	}{
		{`DELETE FROM epoch_times WHERE epoch > ?`, []any{rp.Epoch}},
		{`DELETE FROM fronts WHERE ex_num < ?`, []any{rp.Execution}},
		{`INSERT OR REPLACE INTO executions (ex_num, worker_count, resume_epoch, started_unix_ms, snapshot_interval_ms, backup_interval_ms) VALUES (?, ?, ?, ?, ?, ?)`,
			[]any{rp.Execution, workers, rp.Epoch, now, sb.Snapshot.Milliseconds(), sb.Backup.Milliseconds()}},
		{`INSERT OR IGNORE INTO epoch_times (epoch, unix_ms) VALUES (?, ?)`, []any{rp.Epoch, now}},
		{`INSERT INTO meta (key, value) VALUES ('flow_name', ?) ON CONFLICT (key) DO NOTHING`, []any{s.opts.FlowName}},
		{`INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot_interval_ms', ?), ('backup_interval_ms', ?)`,
			[]any{strconv.FormatInt(sb.Snapshot.Milliseconds(), 10), strconv.FormatInt(sb.Backup.Milliseconds(), 10)}},
	}
	for _, st := range stmts {
		if _, err := tx.ExecContext(ctx, st.q, st.args...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Load calls fn for every key's newest row below `below` that is not a
// tombstone, scanning each partition once in primary-key order; partitions
// are scanned concurrently, so fn must be safe for concurrent use.
func (s *Store) Load(ctx context.Context, below Epoch, fn func(Row) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(s.parts))
	for i, p := range s.parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := LoadPartition(ctx, p.DB, below, fn); err != nil {
				errs[i] = fmt.Errorf("load partition %d: %w", p.Index, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// LoadPartition scans one partition (see Store.Load).
func LoadPartition(ctx context.Context, q queryer, below Epoch, fn func(Row) error) error {
	rows, err := q.QueryContext(ctx, `SELECT step_id, state_key, ser FROM snaps NOT INDEXED WHERE epoch < ? ORDER BY step_id, state_key, epoch`, below)
	if err != nil {
		return err
	}
	defer rows.Close()
	var step, key sql.RawBytes
	var val sql.RawBytes
	var curStep, curKey []byte
	var curVal []byte
	have := false
	emit := func() error {
		if !have || curVal == nil {
			return nil
		}
		return fn(Row{Step: StepID(curStep), Key: StateKey(curKey), Value: curVal})
	}
	for rows.Next() {
		if err := rows.Scan(&step, &key, &val); err != nil {
			return err
		}
		if have && string(step) == string(curStep) && string(key) == string(curKey) {
			curVal = cloneOrNil(val)
			continue
		}
		if err := emit(); err != nil {
			return err
		}
		curStep = append(curStep[:0], step...)
		curKey = append(curKey[:0], key...)
		curVal = cloneOrNil(val)
		have = true
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return emit()
}

func cloneOrNil(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

// Commit queues changes and worker w's new frontier; every partition gets
// the frontier, each row goes to PartitionFor(step, key). It returns the
// error of an earlier failed commit, if any. Blocks when writers are behind.
func (s *Store) Commit(ctx context.Context, w WorkerIndex, frontier Epoch, rows []Row) error {
	if err := s.Err(); err != nil {
		return err
	}
	if int(w) < 0 || int(w) >= s.workers {
		return fmt.Errorf("commit from worker %d of %d", w, s.workers)
	}
	split := make([][]Row, len(s.parts))
	if s.count == 1 && len(s.parts) == 1 {
		split[0] = rows
	} else {
		idx := make([]int, len(rows))
		counts := make([]int, len(s.parts))
		for j, r := range rows {
			i, ok := s.byIdx[PartitionFor(r.Step, r.Key, s.count)]
			if !ok {
				return fmt.Errorf("row %s/%s belongs to partition %d, which this store does not hold", r.Step, r.Key, PartitionFor(r.Step, r.Key, s.count))
			}
			idx[j] = i
			counts[i]++
		}
		for i := range split {
			split[i] = make([]Row, 0, counts[i])
		}
		for j, r := range rows {
			split[idx[j]] = append(split[idx[j]], r)
		}
	}
	for i, wr := range s.writers {
		select {
		case wr.ch <- submission{w: w, frontier: frontier, rows: split[i]}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Flush waits until every commit queued before it is applied (durable, or
// failed), and returns the store's error.
func (s *Store) Flush(ctx context.Context) error {
	dones := make([]chan struct{}, len(s.writers))
	for i, wr := range s.writers {
		dones[i] = make(chan struct{})
		select {
		case wr.ch <- submission{done: dones[i]}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, d := range dones {
		select {
		case <-d:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.Err()
}

// Err returns the first error of an asynchronous commit.
func (s *Store) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Store) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

// committed records that partition i durably holds frontier f for worker w,
// and returns the frontier durable in every partition.
func (s *Store) committed(i int, w WorkerIndex, f Epoch) Epoch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f > s.fronts[i][w] {
		s.fronts[i][w] = f
	}
	return s.globalLocked()
}

func (s *Store) global() Epoch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.globalLocked()
}

func (s *Store) globalLocked() Epoch {
	g := Epoch(1<<63 - 1)
	for _, fs := range s.fronts {
		for _, f := range fs {
			g = min(g, f)
		}
	}
	if s.opts.Global != nil {
		g = min(g, s.opts.Global())
	}
	return g
}

// PartitionCount is the flow's number of partitions.
func (s *Store) PartitionCount() PartitionCount { return s.count }

// Close waits for every queued commit to be durable and closes the
// partitions. It returns the first commit error.
func (s *Store) Close() error {
	for _, w := range s.writers {
		close(w.ch)
	}
	s.wg.Wait()
	// Every commit is in: collect what the last commits made collectable.
	for _, w := range s.writers {
		if s.Err() != nil {
			break
		}
		if err := w.maybeGC(); err != nil {
			s.fail(fmt.Errorf("partition %d: %w", w.p.Index, err))
		}
	}
	s.writers = nil
	err := s.Err()
	for _, p := range s.parts {
		if cerr := p.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}
	return err
}
