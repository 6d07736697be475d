package recovery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
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
	// OnApplied, if set, is told when commits became readable by
	// ReadState and ScanState (Written may have risen). It must not block.
	OnApplied func()
	// MaxPendingBytes bounds the snapshot bytes committed but not yet
	// written: Commit waits while more are queued (DefaultMaxPendingBytes
	// if zero). A single commit larger than the bound still goes through,
	// alone.
	MaxPendingBytes int64
	// CompactEvery is how many epochs the commit epoch moves between
	// compactions (default max(16, d)).
	CompactEvery Epoch
	// CompactTogether lets every partition compact at once (by default one
	// compacts at a time: its segments are in memory while it does). A
	// store whose segments are all indexed in memory anyway (OpenState
	// with full indexing) loses nothing by it.
	CompactTogether bool
	// CompactLiveBytes, if positive, also starts a compaction once the
	// segments a store with full state indexing (OpenState) added to its
	// in-memory index since the last compaction exceed it, over all its
	// partitions (each compacts past its share): the index stays bounded
	// however many keys an epoch changes. Segments a run found at its start
	// do not count, so a short run over a little input compacts nothing
	// (compacting after every epoch made a +1% continuation of a large
	// state rewrite most of its base).
	CompactLiveBytes int64

	noPassLog bool // tests and benchmarks: keep no pass log
}

// DefaultMaxPendingBytes is the default bound on snapshot bytes queued for
// the partitions' writers.
const DefaultMaxPendingBytes = 256 << 20

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
	lineage LineageStart

	writers []*writer
	wg      sync.WaitGroup

	mu       sync.Mutex
	err      error
	fronts   [][]Epoch     // committed frontier per partition and worker
	changed  chan struct{} // closed and replaced when a frontier rises or the store fails
	appliedC chan struct{} // closed and replaced when a writer applied commits or the store fails

	pmu      sync.Mutex
	pending  int64         // bytes queued for the writers
	released chan struct{} // closed and replaced when pending falls or the store fails

	// life guards the store's lifecycle: calls that queue work hold it for
	// reading while they run; Close takes it for writing (waiting for them),
	// marks the store closed, and only then stops the writers.
	life   sync.RWMutex
	closed bool

	compacting chan struct{} // holds a token while a partition compacts
	slice      int           // keys one compaction slice merges (compactSlice; tests use fewer)

	state atomic.Pointer[stateIndex] // set by OpenState
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
	if opts.MaxPendingBytes <= 0 {
		opts.MaxPendingBytes = DefaultMaxPendingBytes
	}
	together := 1
	if opts.CompactTogether {
		together = max(1, len(ps))
	}
	s := &Store{opts: opts, parts: ps, count: count, byIdx: map[PartitionIndex]int{}, changed: make(chan struct{}), compacting: make(chan struct{}, together), slice: compactSlice}
	s.released = make(chan struct{})
	s.appliedC = make(chan struct{})
	for i, p := range ps {
		s.byIdx[p.Index] = i
	}
	return s
}

// liveShare is a partition's share of Options.CompactLiveBytes (0: none).
func (s *Store) liveShare() int64 {
	if s.opts.CompactLiveBytes <= 0 {
		return 0
	}
	return max(1, s.opts.CompactLiveBytes/int64(len(s.parts)))
}

func (s *Store) compactEvery() Epoch {
	if s.opts.CompactEvery > 0 {
		return s.opts.CompactEvery
	}
	return max(16, s.opts.Intervals.D())
}

// Views reads what each of the store's partitions says about the flow.
func (s *Store) Views(ctx context.Context) ([]*View, error) {
	views := make([]*View, len(s.parts))
	for i, p := range s.parts {
		v, err := ReadView(ctx, p.DB)
		if err != nil {
			return nil, fmt.Errorf("partition %d: %w", p.Index, err)
		}
		v.Moved = moved(v, p.Path)
		views[i] = v
	}
	return views, nil
}

// Partitions returns the open partitions, by index.
func (s *Store) Partitions() []*Partition { return s.parts }

// Workers is the worker count of the execution (after Begin).
func (s *Store) Workers() int { return s.workers }

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
	ls, err := StartLineage(views, rp.Epoch, NewLineageID, s.opts.Now())
	if err != nil {
		return ResumePoint{}, err
	}
	s.UseLineage(ls)
	return rp, s.BeginAt(ctx, rp, workers)
}

// BeginAt records execution rp on the store's partitions (the resume point
// was computed from every partition's view, possibly across processes) and
// starts the writers.
func (s *Store) BeginAt(ctx context.Context, rp ResumePoint, workers int) error {
	if err := s.prepare(ctx, rp, workers); err != nil {
		return err
	}
	for _, w := range s.writers {
		s.wg.Add(1)
		go w.loop()
	}
	return nil
}

// prepare is BeginAt without starting the writers' goroutines (tests drive
// the writers by hand).
func (s *Store) prepare(ctx context.Context, rp ResumePoint, workers int) error {
	if workers < 1 {
		return fmt.Errorf("workers must be at least 1")
	}
	if s.lineage.Lineage.ID == "" {
		views, err := s.Views(ctx)
		if err != nil {
			return err
		}
		ls, err := StartLineage(views, rp.Epoch, NewLineageID, s.opts.Now())
		if err != nil {
			return err
		}
		s.UseLineage(ls)
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
	// Build every writer before starting any, so a failure leaves nothing
	// running (and Close has nothing to stop).
	writers := make([]*writer, len(s.parts))
	for i, p := range s.parts {
		ce, err := metaEpoch(ctx, p.DB, "commit_epoch")
		if err != nil {
			return err
		}
		compacted, err := metaEpoch(ctx, p.DB, "compacted_epoch")
		if err != nil {
			return err
		}
		steps, err := loadSteps(ctx, p.DB)
		if err != nil {
			return fmt.Errorf("partition %d: %w", p.Index, err)
		}
		pass, err := startPassLog(ctx, p.DB, rp.Epoch)
		if err != nil {
			return fmt.Errorf("partition %d: %w", p.Index, err)
		}
		w := &writer{s: s, p: p, idx: i, ch: make(chan submission, 16), commit: max(ce, 1), compact: max(compacted, 1),
			frontier: rp.Epoch, front: make([]Epoch, workers), steps: &sharedSteps{t: steps, persisted: len(steps.byNum)},
			applied: make([]atomic.Uint64, workers), pass: pass}
		if s.opts.noPassLog {
			w.pass.on = false
		}
		for j := range w.front {
			w.front[j] = rp.Epoch
		}
		writers[i] = w
	}
	s.writers = writers
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
	if err := resetPassLog(ctx, tx); err != nil {
		return fmt.Errorf("reset the pass log: %w", err)
	}
	if err := raiseCompactionPoint(ctx, tx); err != nil {
		return fmt.Errorf("check the compaction point: %w", err)
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
	if err := writeLineage(ctx, tx, s.lineage.Lineage, false, p.Path); err != nil {
		return fmt.Errorf("record the lineage: %w", err)
	}
	runs, err := readRuns(ctx, tx)
	if err != nil {
		return err
	}
	if err := appendRun(ctx, tx, runs, Run{N: rp.Execution, Resume: rp.Epoch, ID: s.lineage.Run}); err != nil {
		return fmt.Errorf("record the run: %w", err)
	}
	return tx.Commit()
}

// UseLineage sets the history the next BeginAt records (decided with
// StartLineage over every partition's view, possibly across processes);
// without it BeginAt decides from the store's own partitions.
func (s *Store) UseLineage(ls LineageStart) { s.lineage = ls }

// Lineage is the history the store's execution writes, and why (after
// Begin).
func (s *Store) Lineage() LineageStart { return s.lineage }

// Load hands fn, in batches, every key's newest row below `below` that is
// not a tombstone, merging each partition's base with its segments in one
// ordered pass; partitions are loaded concurrently, so fn must be safe for
// concurrent use. A batch and its values are only valid during the call.
func (s *Store) Load(ctx context.Context, below Epoch, fn func([]Row) error) error {
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

// KeyHint estimates, per step, how many keys a Load below `below` yields:
// its base rows (as last counted) plus the changes of the epoch below
// `below` that changed the most keys (keys change again and again across
// epochs; the largest epoch is the best cheap guess of how many keys the
// segments add). A hint for sizing maps, never a promise.
func (s *Store) KeyHint(ctx context.Context, below Epoch) (map[StepID]int64, error) {
	out := map[StepID]int64{}
	for _, p := range s.parts {
		base := map[StepID]int64{}
		rows, err := p.DB.QueryContext(ctx, `SELECT step_id, keys FROM steps`)
		if err != nil {
			return nil, err
		}
		var total int64
		for rows.Next() {
			var id string
			var n int64
			if err := rows.Scan(&id, &n); err != nil {
				rows.Close()
				return nil, err
			}
			base[StepID(id)] = n
			total += n
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		var seg int64
		if err := p.DB.QueryRowContext(ctx, `SELECT coalesce(max(n), 0) FROM (SELECT sum(entries) AS n FROM segments WHERE epoch < ? GROUP BY epoch)`, below).Scan(&seg); err != nil {
			return nil, err
		}
		for id, n := range base {
			if n > 0 || total == 0 {
				out[id] += n + seg
			}
		}
	}
	return out, nil
}

// baseCursor walks the base table in k order.
type baseCursor struct {
	rows *sql.Rows
	cur  entry
	k, v sql.RawBytes
	err  error
}

func (b *baseCursor) next() bool {
	if !b.rows.Next() {
		b.err = b.rows.Err()
		return false
	}
	if err := b.rows.Scan(&b.k, &b.cur.epoch, &b.v); err != nil {
		b.err = err
		return false
	}
	b.cur.k, b.cur.val, b.cur.tomb = b.k, b.v, false
	return true
}

func (b *baseCursor) entry() *entry { return &b.cur }
func (b *baseCursor) error() error  { return b.err }

// loadBatch is how many rows Load hands over at once.
const loadBatch = 1024

// LoadPartition loads one partition (see Store.Load): the base scanned in
// key order, merged with the segments below `below`.
func LoadPartition(ctx context.Context, q queryer, below Epoch, fn func([]Row) error) error {
	steps, err := loadSteps(ctx, q)
	if err != nil {
		return err
	}
	// Segments first: a compaction finishing meanwhile moves their changes
	// into the base, where the scan after finds them; the other order could
	// miss them. (A writer's single connection also serves one query at a
	// time.)
	var segIters []cursor
	if err := eachSegment(ctx, q, below, func(it *segmentIter) error { segIters = append(segIters, it); return nil }); err != nil {
		return err
	}
	rows, err := q.QueryContext(ctx, `SELECT k, epoch, ser FROM base ORDER BY k`)
	if err != nil {
		return err
	}
	defer rows.Close()
	cs := append([]cursor{&baseCursor{rows: rows}}, segIters...)
	m := newMerger(cs)
	batch := make([]Row, 0, loadBatch)
	var vals []byte   // the batch's values: the merger reuses its own
	var keys []byte   // the batch's keys, made one string at flush
	var ends [][2]int // where each row's value and key end in vals and keys
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		// One allocation for the batch's keys (they live on as state map
		// keys); vals may have moved while it grew: point the rows at both.
		all := string(keys)
		var voff, koff int
		for i := range batch {
			batch[i].Value = vals[voff:ends[i][0]:ends[i][0]]
			batch[i].Key = StateKey(all[koff:ends[i][1]])
			voff, koff = ends[i][0], ends[i][1]
		}
		err := fn(batch)
		clear(batch)
		batch, vals, keys, ends = batch[:0], vals[:0], keys[:0], ends[:0]
		return err
	}
	for m.next() {
		if m.out.tomb {
			continue
		}
		num, key, ok := splitKey(m.out.k)
		step, known := steps.id(num)
		if !ok || !known {
			return fmt.Errorf("%w: key of unknown step %d", ErrCorrupt, num)
		}
		vals = append(vals, m.out.val...)
		keys = append(keys, key...)
		ends = append(ends, [2]int{len(vals), len(keys)})
		batch = append(batch, Row{Step: step, Epoch: m.out.epoch})
		if len(batch) == loadBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if m.err != nil {
		return m.err
	}
	return flush()
}

// Commit queues changes and worker w's new frontier; every partition gets
// the frontier, each row goes to PartitionFor(step, key). It returns the
// error of an earlier failed commit, if any. The rows are encoded before it
// returns (the caller may reuse them); it waits while the writers hold more
// than MaxPendingBytes of earlier commits.
func (s *Store) Commit(ctx context.Context, w WorkerIndex, frontier Epoch, rows []Row) error {
	return s.CommitFunc(ctx, w, frontier, len(rows), func(i int) *Row { return &rows[i] })
}

// CommitFunc is Commit over n rows given by at (valid until the next call
// of at), for callers whose changes are not Rows.
func (s *Store) CommitFunc(ctx context.Context, w WorkerIndex, frontier Epoch, n int, at func(int) *Row) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.Err(); err != nil {
		return err
	}
	if s.writers == nil {
		return fmt.Errorf("commit before Begin")
	}
	if int(w) < 0 || int(w) >= s.workers {
		return fmt.Errorf("commit from worker %d of %d", w, s.workers)
	}
	batches := make([]*batch, len(s.parts))
	type stepCache struct {
		id  StepID
		num uint64
	}
	cache := make([]stepCache, len(s.parts))
	var lastStep StepID
	var lastHash uint64
	single := len(s.parts) == 1 && s.count == 1
	// Rows come in chunks: first every row's partition, then the rows
	// copied into their partitions' batches.
	const chunk = 512
	var where [chunk]int32
	for base := 0; base < n; base += chunk {
		m := min(chunk, n-base)
		if !single {
			for j := 0; j < m; j++ {
				r := at(base + j)
				if r.Step != lastStep || lastHash == 0 {
					lastStep, lastHash = r.Step, stepHash(r.Step)
				}
				pi := partitionAfter(lastHash, r.Key, s.count)
				i, ok := s.byIdx[pi]
				if !ok {
					return fmt.Errorf("row %s/%s belongs to partition %d, which this store does not hold", r.Step, r.Key, pi)
				}
				where[j] = int32(i)
			}
		}
		for j := 0; j < m; j++ {
			r := at(base + j)
			i := int(where[j])
			b := batches[i]
			if b == nil {
				b = getBatch(n/len(s.parts) + 16)
				batches[i] = b
			}
			c := &cache[i]
			if c.num == 0 || c.id != r.Step {
				c.id, c.num = r.Step, s.writers[i].steps.num(r.Step)
			}
			b.add(c.num, r.Key, r.Epoch, r.Value)
		}
	}
	var size int64
	for _, b := range batches {
		if b != nil {
			size += b.bytes()
		}
	}
	if err := s.reserve(ctx, size); err != nil {
		return err
	}
	for i, wr := range s.writers {
		sub := submission{w: w, frontier: frontier, b: batches[i]}
		if i == 0 {
			sub.bytes = size // released by partition 0's writer
		}
		select {
		case wr.ch <- sub:
		case <-ctx.Done():
			if i == 0 {
				s.release(size)
			}
			return ctx.Err()
		}
	}
	return nil
}

// ErrClosed says the store was closed: it takes no more work.
var ErrClosed = errors.New("recovery store closed")

// enter admits a call that queues work, unless the store is closed; leave
// ends it (Close waits for every call admitted).
func (s *Store) enter() error {
	s.life.RLock()
	if s.closed {
		s.life.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *Store) leave() { s.life.RUnlock() }

// reserve waits until size more bytes fit in the writers' budget (or the
// queue is empty: one commit larger than the budget still goes, alone),
// the store fails, or ctx ends.
func (s *Store) reserve(ctx context.Context, size int64) error {
	for {
		if err := s.Err(); err != nil {
			return err
		}
		s.pmu.Lock()
		if s.pending == 0 || s.pending+size <= s.opts.MaxPendingBytes {
			s.pending += size
			s.pmu.Unlock()
			return nil
		}
		wake := s.released
		s.pmu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *Store) release(size int64) {
	if size == 0 {
		return
	}
	s.pmu.Lock()
	s.pending -= size
	s.wakeReservers()
	s.pmu.Unlock()
}

// wakeReservers wakes every reserve waiting (s.pmu held).
func (s *Store) wakeReservers() {
	close(s.released)
	s.released = make(chan struct{})
}

// WaitDurable waits until every epoch below frontier is durable in every
// partition (and, in a cluster, wherever Options.Global says), or the store
// failed.
func (s *Store) WaitDurable(ctx context.Context, frontier Epoch) error {
	for {
		s.mu.Lock()
		g, err, ch := s.globalLocked(), s.err, s.changed
		s.mu.Unlock()
		if err != nil {
			return err
		}
		if g >= frontier {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Changed returns a channel closed at the next rise of a committed frontier
// (for waiters on frontiers the store learns of from outside, e.g. other
// processes, call Notify).
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Notify wakes WaitDurable callers (Options.Global may have risen).
func (s *Store) Notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// Compact merges every segment below each partition's commit epoch into
// its base now, after the commits queued before it.
func (s *Store) Compact(ctx context.Context) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	errs := make([]chan error, len(s.writers))
	for i, wr := range s.writers {
		errs[i] = make(chan error, 1)
		select {
		case wr.ch <- submission{compact: errs[i]}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var all []error
	for i, c := range errs {
		select {
		case err := <-c:
			if err != nil {
				all = append(all, fmt.Errorf("compact partition %d: %w", s.parts[i].Index, err))
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.Join(all...)
}

// Flush waits until every commit queued before it is applied (durable, or
// failed), and returns the store's error.
func (s *Store) Flush(ctx context.Context) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
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
		close(s.changed)
		s.changed = make(chan struct{})
		close(s.appliedC)
		s.appliedC = make(chan struct{})
	}
	s.mu.Unlock()
	s.pmu.Lock()
	s.wakeReservers()
	s.pmu.Unlock()
}

// committed records that partition i durably holds frontier f for worker w,
// and returns the frontier durable in every partition.
func (s *Store) committed(i int, w WorkerIndex, f Epoch) Epoch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f > s.fronts[i][w] {
		s.fronts[i][w] = f
		close(s.changed)
		s.changed = make(chan struct{})
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
// partitions. It returns the first commit error. The commit epoch moves for
// what the last commits made durable; a compaction under way is left to
// the next run (it starts again, and loses nothing meanwhile). Close is
// safe after a failed Begin, and twice. From the moment it is called it
// refuses new work (ErrClosed); it waits for the calls already admitted,
// so a commit racing it is either applied or refused, never lost half-way.
func (s *Store) Close() error { return s.Shutdown(context.Background()) }

// ErrShutdownTimeout says Shutdown's context ended while commits it had
// accepted were still being written: they may not be durable, and the
// partitions were left open (the writers still use them).
var ErrShutdownTimeout = errors.New("recovery store: commits still being written when shutdown's time ran out")

// Shutdown is Close bounded by ctx: it refuses new work (ErrClosed), waits
// for the calls in flight and for the writers to make every accepted commit
// durable, stops them, then runs GC and releases the partitions. If ctx
// ends first it returns ErrShutdownTimeout (wrapping the context's cause)
// and leaves the writers running and the partitions open: a process that
// gives up on them should exit.
func (s *Store) Shutdown(ctx context.Context) error {
	s.life.Lock()
	already := s.closed
	s.closed = true
	s.life.Unlock()
	if !already {
		for _, w := range s.writers {
			close(w.ch)
		}
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrShutdownTimeout, context.Cause(ctx))
	}
	for _, w := range s.writers {
		if s.Err() != nil {
			break
		}
		if err := w.maybeGC(false); err != nil {
			s.fail(fmt.Errorf("partition %d: %w", w.p.Index, err))
		}
	}
	s.writers = nil
	err := s.Err()
	if si := s.state.Load(); si != nil {
		for _, ps := range si.parts {
			ps.close()
		}
	}
	for _, p := range s.parts {
		if cerr := p.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}
	return err
}
