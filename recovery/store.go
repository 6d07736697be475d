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
}

// Store writes one flow's snapshots into its partitions. Create it with
// Open, call Begin once, Load, then Commit as epochs close, then Close.
type Store struct {
	opts  Options
	parts []*Partition

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
	return &Store{opts: opts, parts: ps}, nil
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
	views := make([]*View, len(s.parts))
	for i, p := range s.parts {
		v, err := ReadView(ctx, p.DB)
		if err != nil {
			return ResumePoint{}, fmt.Errorf("partition %d: %w", p.Index, err)
		}
		views[i] = v
	}
	rp, err := Resume(views)
	if err != nil {
		return ResumePoint{}, err
	}
	now := unixMs(s.opts.Now())
	for _, p := range s.parts {
		if err := s.beginPartition(ctx, p, rp, workers, now); err != nil {
			return ResumePoint{}, fmt.Errorf("begin execution %d on partition %d: %w", rp.Execution, p.Index, err)
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
			return ResumePoint{}, err
		}
		w := &writer{s: s, p: p, idx: i, ch: make(chan submission, 16), commit: max(ce, 1), frontier: rp.Epoch,
			front: make([]Epoch, workers)}
		if err := p.DB.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM changelog`).Scan(&w.seq); err != nil {
			return ResumePoint{}, err
		}
		for j := range w.front {
			w.front[j] = rp.Epoch
		}
		s.writers[i] = w
		s.wg.Add(1)
		go w.loop()
	}
	return rp, nil
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
	n := PartitionCount(len(s.parts))
	split := make([][]Row, len(s.parts))
	if len(s.parts) == 1 {
		split[0] = rows
	} else {
		idx := make([]PartitionIndex, len(rows))
		counts := make([]int, len(s.parts))
		for j, r := range rows {
			idx[j] = PartitionFor(r.Step, r.Key, n)
			counts[idx[j]]++
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
	g := s.fronts[0][0]
	for _, fs := range s.fronts {
		for _, f := range fs {
			g = min(g, f)
		}
	}
	return g
}

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
