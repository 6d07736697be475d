package recovery

import (
	"bytes"
	"container/heap"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// State on demand (OpenState, ReadState, ScanState): a run that keeps
// state larger than memory, or that resumes without loading every key,
// reads a key from its partition when it needs it.
//
// Where a key's newest row is: in the base (one row per key, its primary
// key, a point lookup) or in a segment newer than the base. Segments are
// write-optimised BLOBs without a key index, so the segments a lookup may
// need are held in memory, indexed (liveRow: each entry's offset and a
// bloom filter): the segments below the resume epoch, and, for a store
// opened with full indexing, every segment written since. Compaction
// drops them once their changes are in the base, so the index holds the
// changes of the epochs not yet compacted (with Options.CompactEvery = 1,
// about d+2 epochs of changes). A lookup takes the newest entry among the
// indexed rows; if it is older than the partition's compacted epoch (or
// there is none) it also reads the base row, and the newer of the two wins.
//
// A commit is readable once its transaction committed and its rows were
// indexed; Written says, per worker, how many of its commits are. A caller
// that drops a key from memory only once the commit that wrote it is
// readable never reads a stale value.

// stateIndex is what OpenState set up; one partIndex per partition of the
// store, by position.
type stateIndex struct {
	full  bool
	parts []*partIndex
}

type partIndex struct {
	live      liveIndex
	rdb       *sql.DB
	compacted atomic.Uint64 // base rows are of epochs below it
	// baseSteps are the step numbers the base held rows of at OpenState;
	// once a compaction ran (baseGrew), any step may have base rows.
	baseSteps map[uint64]bool
	baseGrew  atomic.Bool
	stmtOnce  sync.Once
	stmt      *sql.Stmt
	stmtErr   error
}

func (ps *partIndex) baseMayHold(num uint64) bool { return ps.baseGrew.Load() || ps.baseSteps[num] }

// StateInfo is what OpenState found.
type StateInfo struct {
	// Steps holds every lazy step that has state (rows that may not be
	// tombstones) in the store's partitions.
	Steps map[StepID]bool
}

// stepRange is the partition-key range of step number num: [lo, hi).
func stepRange(num uint64) (lo, hi []byte) {
	lo = binary.AppendUvarint(nil, num)
	hi = append([]byte(nil), lo...)
	hi[len(hi)-1]++ // a uvarint's last byte is below 0x80
	return lo, hi
}

// OpenState prepares reading state on demand, instead of Load, after
// Begin (or BeginAt) and before the first Commit. It hands fn, as Load
// does, every row of the steps lazy says no to (source and sink positions,
// the runtime's rows, steps the flow no longer has), and indexes the
// segments below `below` so that ReadState and ScanState can find the
// lazy steps' keys. With full set, every segment committed from now on is
// indexed too (a caller that drops keys from memory needs it); without it
// ReadState and ScanState see only the state as it was at the resume epoch
// (or compacted since), and the caller keeps in memory every key it
// changed. fn may be called concurrently from several goroutines; a batch
// and its values are only valid during the call.
func (s *Store) OpenState(ctx context.Context, below Epoch, lazy func(StepID) bool, full bool, fn func([]Row) error) (StateInfo, error) {
	if s.writers == nil {
		return StateInfo{}, fmt.Errorf("open state before Begin")
	}
	if s.state.Load() != nil {
		return StateInfo{}, fmt.Errorf("state opened twice")
	}
	si := &stateIndex{full: full, parts: make([]*partIndex, len(s.parts))}
	infos := make([]map[StepID]bool, len(s.parts))
	errs := make([]error, len(s.parts))
	var wg sync.WaitGroup
	for i, p := range s.parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ps, info, err := openPartIndex(ctx, p, below, lazy, fn)
			if err != nil {
				errs[i] = fmt.Errorf("partition %d: %w", p.Index, err)
				return
			}
			si.parts[i], infos[i] = ps, info
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, ps := range si.parts {
			if ps != nil {
				ps.close()
			}
		}
		return StateInfo{}, err
	}
	out := StateInfo{Steps: map[StepID]bool{}}
	for _, info := range infos {
		for id := range info {
			out.Steps[id] = true
		}
	}
	s.state.Store(si)
	return out, nil
}

func (ps *partIndex) close() {
	if ps.stmt != nil {
		ps.stmt.Close()
	}
	ps.rdb.Close()
}

// stateReadConns bounds each partition's read connections (lookups and
// scans run beside the writer's connection).
const stateReadConns = 4

func openPartIndex(ctx context.Context, p *Partition, below Epoch, lazy func(StepID) bool, fn func([]Row) error) (*partIndex, map[StepID]bool, error) {
	rdb, err := openMode(p.Path, "ro", false, "", "busy_timeout(20000)", "query_only(1)", "cache_size(-1024)")
	if err != nil {
		return nil, nil, err
	}
	rdb.SetMaxOpenConns(stateReadConns)
	ps := &partIndex{rdb: rdb, baseSteps: map[uint64]bool{}}
	fail := func(err error) (*partIndex, map[StepID]bool, error) {
		rdb.Close()
		return nil, nil, err
	}
	// One read transaction, so the segments and the base agree.
	tx, err := rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fail(err)
	}
	defer tx.Rollback()
	compacted, err := metaEpoch(ctx, tx, "compacted_epoch")
	if err != nil {
		return fail(err)
	}
	ps.compacted.Store(uint64(compacted))
	steps, err := loadSteps(ctx, tx)
	if err != nil {
		return fail(err)
	}
	live, err := readLiveRows(ctx, tx, `SELECT seq, epoch, data FROM segments WHERE epoch < ? ORDER BY epoch, seq`, int64(below))
	if err != nil {
		return fail(fmt.Errorf("read segments: %w", err))
	}
	ps.live.add(live)
	info := map[StepID]bool{}
	var cs []cursor
	for num, id := range steps.byNum {
		if id == "" {
			continue
		}
		lo, hi := stepRange(uint64(num))
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM base WHERE k >= ? AND k < ? LIMIT 1`, lo, hi).Scan(&one)
		switch {
		case err == nil:
			ps.baseSteps[uint64(num)] = true
		case !errors.Is(err, sql.ErrNoRows):
			return fail(err)
		}
		if lazy(id) {
			has := ps.baseSteps[uint64(num)]
			for _, r := range live {
				if i, j := r.span(lo, hi); i < j {
					has = true
					break
				}
			}
			if has {
				info[id] = true
			}
			continue
		}
		if ps.baseSteps[uint64(num)] {
			brows, err := tx.QueryContext(ctx, `SELECT k, epoch, ser FROM base WHERE k >= ? AND k < ? ORDER BY k`, lo, hi)
			if err != nil {
				return fail(err)
			}
			defer brows.Close()
			cs = append(cs, &baseCursor{rows: brows})
		}
		for _, r := range live {
			if i, j := r.span(lo, hi); i < j {
				cs = append(cs, &liveCursor{r: r, i: i, j: j})
			}
		}
	}
	if len(cs) > 0 {
		if err := emitMerged(newMerger(cs), steps, fn); err != nil {
			return fail(err)
		}
	}
	return ps, info, nil
}

// emitMerged hands fn, in batches, every row a merger yields that is not
// a tombstone.
func emitMerged(m *merger, steps *stepTable, fn func([]Row) error) error {
	var b rowBatch
	for m.next() {
		if m.out.tomb {
			continue
		}
		num, key, ok := splitKey(m.out.k)
		step, known := steps.id(num)
		if !ok || !known {
			return fmt.Errorf("%w: key of unknown step %d", ErrCorrupt, num)
		}
		if b.add(step, key, m.out.epoch, m.out.val) == loadBatch {
			if err := b.flush(fn); err != nil {
				return err
			}
		}
	}
	if m.err != nil {
		return m.err
	}
	return b.flush(fn)
}

// rowBatch gathers rows whose keys and values it copies (one allocation
// for the batch's keys: they may live on as map keys).
type rowBatch struct {
	rows []Row
	vals []byte
	keys []byte
	ends [][2]int
}

func (b *rowBatch) add(step StepID, key []byte, e Epoch, val []byte) int {
	b.vals = append(b.vals, val...)
	b.keys = append(b.keys, key...)
	b.ends = append(b.ends, [2]int{len(b.vals), len(b.keys)})
	b.rows = append(b.rows, Row{Step: step, Epoch: e})
	return len(b.rows)
}

func (b *rowBatch) flush(fn func([]Row) error) error {
	if len(b.rows) == 0 {
		return nil
	}
	all := string(b.keys)
	var voff, koff int
	for i := range b.rows {
		b.rows[i].Value = b.vals[voff:b.ends[i][0]:b.ends[i][0]]
		b.rows[i].Key = StateKey(all[koff:b.ends[i][1]])
		voff, koff = b.ends[i][0], b.ends[i][1]
	}
	err := fn(b.rows)
	clear(b.rows)
	b.rows, b.vals, b.keys, b.ends = b.rows[:0], b.vals[:0], b.keys[:0], b.ends[:0]
	return err
}

// Written returns how many of worker w's commits are readable by
// ReadState and ScanState (committed in every partition, and indexed).
func (s *Store) Written(w WorkerIndex) uint64 {
	var n uint64 = 1<<64 - 1
	for _, wr := range s.writers {
		if int(w) < len(wr.applied) {
			n = min(n, wr.applied[w].Load())
		}
	}
	if n == 1<<64-1 {
		return 0
	}
	return n
}

// WaitWritten waits until Written(w) >= n, the store fails, or ctx ends.
func (s *Store) WaitWritten(ctx context.Context, w WorkerIndex, n uint64) error {
	for {
		s.mu.Lock()
		ch, err := s.appliedC, s.err
		s.mu.Unlock()
		if err != nil {
			return err
		}
		if s.Written(w) >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notifyApplied wakes WaitWritten callers.
func (s *Store) notifyApplied() {
	s.mu.Lock()
	close(s.appliedC)
	s.appliedC = make(chan struct{})
	s.mu.Unlock()
	if s.opts.OnApplied != nil {
		s.opts.OnApplied()
	}
}

// StateBytes is the memory the index of live segments holds (OpenState).
func (s *Store) StateBytes() int64 {
	si := s.state.Load()
	if si == nil {
		return 0
	}
	var n int64
	for _, ps := range si.parts {
		n += ps.live.bytes.Load()
	}
	return n
}

// lookupBatch is how many keys one base query reads.
const lookupBatch = 128

var lookupSQL = "SELECT k, epoch, ser FROM base WHERE k IN (?" + strings.Repeat(", ?", lookupBatch-1) + ") ORDER BY k"

// ReadState reads keys of step from the store's partitions (after
// OpenState): for each key with state, fn gets its index in keys and its
// newest row's epoch and value (valid during the call). Keys without
// state (never written, or discarded) are not handed over. Every key must
// belong to one of the store's partitions.
func (s *Store) ReadState(ctx context.Context, step StepID, keys []StateKey, fn func(i int, e Epoch, value []byte) error) error {
	si := s.state.Load()
	if si == nil {
		return fmt.Errorf("read state before OpenState")
	}
	h := stepHash(step)
	byPart := make([][]int32, len(s.parts))
	for i, k := range keys {
		pi := partitionAfter(h, k, s.count)
		pos, ok := s.byIdx[pi]
		if !ok {
			return fmt.Errorf("key %s/%s belongs to partition %d, which this store does not hold", step, k, pi)
		}
		byPart[pos] = append(byPart[pos], int32(i))
	}
	for pos, idx := range byPart {
		if len(idx) == 0 {
			continue
		}
		if err := s.readPart(ctx, si.parts[pos], s.writers[pos].steps, step, keys, idx, fn); err != nil {
			return fmt.Errorf("read state of %s from partition %d: %w", step, s.parts[pos].Index, err)
		}
	}
	return nil
}

// pending is a key a lookup still asks the base about, with the segment
// entry it found (if any).
type pendingKey struct {
	i   int32
	k   []byte
	hit entry
	has bool
}

func (s *Store) readPart(ctx context.Context, ps *partIndex, steps *sharedSteps, step StepID, keys []StateKey, idx []int32, fn func(int, Epoch, []byte) error) error {
	num, ok := steps.lookup(step)
	if !ok {
		return nil // never written here
	}
	rows := ps.live.list()
	compacted := Epoch(ps.compacted.Load())
	var buf []byte
	var base []pendingKey
	for _, i := range idx {
		start := len(buf)
		buf = appendKey(buf, num, keys[i])
		k := buf[start:len(buf):len(buf)]
		e, hit := newest(rows, k)
		if hit && e.epoch >= compacted {
			if !e.tomb {
				if err := fn(int(i), e.epoch, e.val); err != nil {
					return err
				}
			}
			continue
		}
		if !ps.baseMayHold(num) {
			if hit && !e.tomb {
				if err := fn(int(i), e.epoch, e.val); err != nil {
					return err
				}
			}
			continue
		}
		base = append(base, pendingKey{i: i, k: k, hit: e, has: hit})
	}
	if len(base) == 0 {
		return nil
	}
	// buf may have moved while it grew: the keys were sliced before, so
	// they still point at the bytes they were written to.
	slices.SortFunc(base, func(a, b pendingKey) int { return bytes.Compare(a.k, b.k) })
	ps.stmtOnce.Do(func() { ps.stmt, ps.stmtErr = ps.rdb.PrepareContext(context.Background(), lookupSQL) })
	if ps.stmtErr != nil {
		return ps.stmtErr
	}
	args := make([]any, lookupBatch)
	for start := 0; start < len(base); start += lookupBatch {
		chunk := base[start:min(start+lookupBatch, len(base))]
		for j := range args {
			args[j] = chunk[min(j, len(chunk)-1)].k // pad with the last key
		}
		if err := lookupChunk(ctx, ps.stmt, args, chunk, fn); err != nil {
			return err
		}
	}
	return nil
}

// lookupChunk reads the base rows of a sorted chunk of keys and hands fn
// each key's newer of its base row and its segment entry.
func lookupChunk(ctx context.Context, stmt *sql.Stmt, args []any, chunk []pendingKey, fn func(int, Epoch, []byte) error) error {
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	var k, v sql.RawBytes
	var e Epoch
	j := 0
	emit := func(p pendingKey) error {
		if p.has && !p.hit.tomb {
			return fn(int(p.i), p.hit.epoch, p.hit.val)
		}
		return nil
	}
	for rows.Next() {
		if err := rows.Scan(&k, &e, &v); err != nil {
			return err
		}
		for j < len(chunk) && bytes.Compare(chunk[j].k, k) < 0 {
			if err := emit(chunk[j]); err != nil {
				return err
			}
			j++
		}
		if j < len(chunk) && bytes.Equal(chunk[j].k, k) {
			p := chunk[j]
			j++
			if p.has && p.hit.epoch >= e {
				if err := emit(p); err != nil {
					return err
				}
				continue
			}
			if err := fn(int(p.i), e, v); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for ; j < len(chunk); j++ {
		if err := emit(chunk[j]); err != nil {
			return err
		}
	}
	return nil
}

// ScanState hands fn, in batches in state-key order, every key of step
// in the store's partitions whose newest row is not a tombstone and, unless
// every is set, was written after epoch `after`, if keep(key) says so (a
// caller that owns a share of the keys filters them here, before their
// values are copied). A batch and its values are only valid during the
// call. Keys whose newest row is in the base cost a scan of the step's
// base rows unless every base row is older than after+1 (the partition
// compacted no epoch after `after`).
func (s *Store) ScanState(ctx context.Context, step StepID, after Epoch, every bool, keep func(StateKey) bool, fn func([]Row) error) error {
	si := s.state.Load()
	if si == nil {
		return fmt.Errorf("scan state before OpenState")
	}
	var scans []*partScan
	defer func() {
		for _, sc := range scans {
			sc.close()
		}
	}()
	for pos, ps := range si.parts {
		num, ok := s.writers[pos].steps.lookup(step)
		if !ok {
			continue
		}
		sc, err := newPartScan(ctx, ps, s.writers[pos], num, after, every, keep)
		if err != nil {
			return fmt.Errorf("scan state of %s in partition %d: %w", step, s.parts[pos].Index, err)
		}
		scans = append(scans, sc)
	}
	return mergeScans(step, scans, fn)
}

// partScan yields a step's keys of one partition in key order, as
// ScanState filters them.
type partScan struct {
	m      *merger
	rows   *sql.Rows
	prefix int // length of the step's prefix in a partition key
	after  Epoch
	every  bool
	keep   func(StateKey) bool
	key    []byte // the current key (without the prefix) and entry
	cur    entry
	viaLog bool // the base's changes after `after` come from the pass log
}

func newPartScan(ctx context.Context, ps *partIndex, w *writer, num uint64, after Epoch, every bool, keep func(StateKey) bool) (*partScan, error) {
	lo, hi := stepRange(num)
	sc := &partScan{prefix: len(lo), after: after, every: every, keep: keep}
	var cs []cursor
	// The live rows are listed before the compaction point, the base and
	// the pass log are read: a compaction commits its last slice, then
	// moves the compaction point, then drops the merged segments from the
	// live index (each slice writes the log in the transaction that writes
	// the base). So every change is in the rows listed here, or below a
	// compaction point read after them, in the base and the log (or both).
	// (Read the other way round, a compaction ending in between could hide
	// its changes from both.)
	rows := ps.live.list()
	compacted := Epoch(ps.compacted.Load())
	// What compaction merged into the base after `after`, when the pass
	// log holds it: segments, merged with the live ones (before them, so
	// that of equal epochs the live entry is the one taken), and no base
	// row is read.
	var logged []*liveRow
	if ps.baseMayHold(num) && (every || compacted > after+1) {
		if !every && w.pass.covers(after) {
			var err error
			if logged, sc.viaLog, err = passLogRows(ctx, ps.rdb, after); err != nil {
				return nil, err
			}
		}
		if !sc.viaLog {
			q := `SELECT k, epoch, ser FROM base WHERE k >= ? AND k < ? ORDER BY k`
			args := []any{lo, hi}
			if !every {
				q = `SELECT k, epoch, ser FROM base WHERE k >= ? AND k < ? AND epoch > ? ORDER BY k`
				args = append(args, int64(after))
			}
			r, err := ps.rdb.QueryContext(ctx, q, args...)
			if err != nil {
				return nil, err
			}
			sc.rows = r
			cs = append(cs, &baseCursor{rows: r})
		}
	}
	for _, r := range append(logged, rows...) {
		if !every && r.epoch <= after {
			continue
		}
		if i, j := r.span(lo, hi); i < j {
			cs = append(cs, &liveCursor{r: r, i: i, j: j})
		}
	}
	sc.m = newMerger(cs)
	return sc, nil
}

// next moves to the next key the scan yields.
func (sc *partScan) next() bool {
	for sc.m.next() {
		e := &sc.m.out
		if e.tomb || (!sc.every && e.epoch <= sc.after) {
			continue
		}
		key := e.k[sc.prefix:]
		if sc.keep != nil && !sc.keep(StateKey(key)) {
			continue
		}
		sc.key, sc.cur = key, *e
		return true
	}
	return false
}

func (sc *partScan) err() error { return sc.m.err }

func (sc *partScan) close() {
	if sc.rows != nil {
		sc.rows.Close()
	}
}

// scanHeap orders partition scans by their current key.
type scanHeap []*partScan

func (h scanHeap) Len() int           { return len(h) }
func (h scanHeap) Less(i, j int) bool { return bytes.Compare(h[i].key, h[j].key) < 0 }
func (h scanHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *scanHeap) Push(x any)        { *h = append(*h, x.(*partScan)) }
func (h *scanHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// mergeScans merges partition scans (each in key order; a key is in one
// partition only) into batches for fn, in key order.
func mergeScans(step StepID, scans []*partScan, fn func([]Row) error) error {
	var h scanHeap
	for _, sc := range scans {
		if sc.next() {
			h = append(h, sc)
		} else if err := sc.err(); err != nil {
			return err
		}
	}
	heap.Init(&h)
	var b rowBatch
	for len(h) > 0 {
		sc := h[0]
		if b.add(step, sc.key, sc.cur.epoch, sc.cur.val) == loadBatch {
			if err := b.flush(fn); err != nil {
				return err
			}
		}
		if sc.next() {
			heap.Fix(&h, 0)
			continue
		}
		if err := sc.err(); err != nil {
			return err
		}
		heap.Pop(&h)
	}
	return b.flush(fn)
}
