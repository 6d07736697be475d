package core

import (
	"fmt"
	"hash/maphash"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
)

// State on demand and state larger than memory.
//
// With a Recovery that is a StateReader, a stateful step does not load its
// keys at resume. Its map holds the keys this run touched; a key that is
// not in it is read from its partition (ReadState) before the items of a
// batch are applied, for all the batch's missing keys at once; a key the
// partitions cannot hold (the step had no state at the start and the key
// was never evicted) is not looked up at all. So a resume costs nothing per
// stored key, and a continuation costs in proportion to what it reads.
//
// With Config.StateMemory the map is also a cache, bounded in bytes:
//   - Accounting: each entry is charged an estimate of what it holds (the
//     map slot, the entry, its key, its state: the state's size for a
//     state without pointers, about twice its encoded size otherwise, and
//     its place in the eviction clock), plus what recovery holds to serve
//     reads (StateReader.StateBytes) and the filter of evicted keys. One
//     budget is shared by the process's stateful instances.
//   - Eviction is a clock (second chance) over the cached entries in the
//     order they entered: an entry may leave only when it is clean (not
//     changed since it was last written) and the commit that wrote it is
//     readable (StateReader.Written), so a later read finds exactly what
//     was in memory; an entry touched since the clock last passed it gets
//     a second chance.
//   - Dirty entries are written when their epoch closes, as without the
//     bound. Once they hold half the budget and the state is near it (a
//     flow that changes more keys in an epoch than the budget holds, e.g.
//     a fresh run over many keys), the oldest-changed are written early,
//     walking the dirty list as a clock (an entry touched since the hand
//     passed it waits a turn), as changes of the open epoch with the
//     worker's frontier unchanged (Recovery.Commit allows it; a resume
//     below the epoch discards them);
//     they leave the dirty list at once and memory once readable. Writing
//     them before the budget runs out gives the writes time to become
//     readable; when it does run out first, the instance waits for them.
//     So the bound holds from the first epoch on, give or take a batch
//     per instance.
//
// End of input visits, in key order, the union of the keys in memory and
// the keys the partitions hold of this pass (StateReader.ScanState: the
// keys whose newest row is after the previous end of input, or every key
// with EOFForEveryKey), streamed: a key read from a partition is visited
// and, if OnEOF changed it, written, without entering the map.

// memBudget is the bound on the keyed state of a process's stateful
// instances.
type memBudget struct {
	limit int64
	used  atomic.Int64
	dirty atomic.Int64 // of used: entries changed in the open epoch, not written yet
	extra func() int64 // what recovery holds to serve reads
}

// avail is what the entries may use: the bound less recovery's share,
// which never leaves the cache less than an eighth of the bound.
func (b *memBudget) avail() int64 {
	avail := b.limit
	if b.extra != nil {
		avail -= b.extra()
	}
	return max(avail, b.limit/8)
}

// over is how many bytes the state uses above the bound (<= 0: none).
func (b *memBudget) over() int64 { return b.used.Load() - b.avail() }

// sizeUnit is the unit of entry.size.
const sizeUnit = 16

// lazyState is a stateful instance's share of state on demand.
type lazyState[S any] struct {
	rd         StateReader
	onDisk     bool // the step had state in the partitions at the start
	evictedAny bool // an entry with state left memory
	budget     *memBudget
	entryBytes int64 // what the entries are charged
	peak       int   // the map's largest size since it was made
	published  int64 // what the budget has been told
	fixed      int64 // per entry, before its key and variable state
	ptrs       bool  // S holds pointers: charge its encoded size too
	evicted    *keySet
	pending    ring[S] // written entries whose writes are not readable yet, in write order
	clock      ring[S] // entries that may leave memory, in clock order
	spillAt    int     // next dirty entry to consider writing early (a clock hand over the dirty list)
	stale      int     // entries of the dirty list written early since it was last compacted
	dirtyBytes int64   // what the dirty entries are charged
	pubDirty   int64   // what the budget has been told of dirtyBytes
	lastTicket uint64  // of the last write this instance made
	spilled    []keyed[S]
	seen       map[string]struct{}
	miss       []StateKey
	cur        Epoch // the open epoch
	worker     WorkerIndex
}

// lookups says whether a key missing from memory may be in a partition.
func (lz *lazyState[S]) lookups() bool { return lz.onDisk || lz.evictedAny }

func (lz *lazyState[S]) mayExist(key string) bool {
	return lz.onDisk || (lz.evictedAny && lz.evicted.has(key))
}

// lazyRoot is a root that reads its state on demand.
type lazyRoot interface {
	useState(rd StateReader, onDisk bool, budget *memBudget)
}

// lazy marks stateful steps (their state is read on demand).
func (s *statefulImpl[V, S, O]) lazy() {}

func (o *statefulOp[V, S, O]) useState(rd StateReader, onDisk bool, budget *memBudget) {
	lz := &lazyState[S]{rd: rd, onDisk: onDisk, budget: budget, seen: map[string]struct{}{}, cur: o.seg.x.start, worker: o.seg.worker}
	if budget != nil {
		t := reflect.TypeFor[S]()
		lz.ptrs = hasPointers(t)
		// The entry and the state; the map, the clock and the dirty list
		// are charged as a whole (structBytes).
		lz.fixed = 16 + roundAlloc(int64(t.Size()))
		lz.evicted = newKeySet()
	}
	o.lz = lz
}

// hasPointers says whether values of t hold pointers (their memory is more
// than their size).
func hasPointers(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Array:
		return t.Len() > 0 && hasPointers(t.Elem())
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			if hasPointers(t.Field(i).Type) {
				return true
			}
		}
		return false
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	}
	return true
}

// roundAlloc rounds an allocation up as the allocator does (roughly: its
// small size classes step by 16 bytes, then by an eighth).
func roundAlloc(n int64) int64 {
	switch {
	case n == 0:
		return 0
	case n <= 16:
		return 16
	case n <= 256:
		return (n + 15) &^ 15
	}
	step := int64(1)
	for step*8 < n {
		step <<= 1
	}
	return (n + step - 1) / step * step
}

// charge sets what entry e (of key) is charged, its state encoding to enc
// bytes.
func (lz *lazyState[S]) charge(e *entry[S], key string, enc int) {
	if lz.budget == nil {
		return
	}
	c := lz.fixed + roundAlloc(int64(len(key)))
	if lz.ptrs {
		c += 2*int64(enc) + 48
	}
	units := min((c+sizeUnit-1)/sizeUnit, 1<<16-1)
	lz.entryBytes += (units - int64(e.size)) * sizeUnit
	e.size = uint16(units)
}

// uncharge takes what e is charged off (it leaves memory).
func (lz *lazyState[S]) uncharge(e *entry[S]) int64 {
	n := int64(e.size) * sizeUnit
	lz.entryBytes -= n
	e.size = 0
	return n
}

// mapSlotBytes is what a Go map[string]*entry costs per entry it has held
// at once (a slot of key and pointer, its control byte, at the map's
// average load): maps keep their size when entries are deleted.
const mapSlotBytes = 48

// publish tells the budget what this instance's state is charged: its
// entries, its map (by the most entries it held), the clock's ring, the
// dirty list and the filter of evicted keys.
func (o *statefulOp[V, S, O]) publish() {
	lz := o.lz
	if lz.budget == nil {
		return
	}
	lz.peak = max(lz.peak, len(o.states))
	total := lz.entryBytes + mapSlotBytes*int64(lz.peak) + lz.clock.bytes() + lz.pending.bytes() + 24*int64(cap(o.dirty)) + lz.evicted.bytes()
	if total != lz.published {
		lz.budget.used.Add(total - lz.published)
		lz.published = total
	}
	if lz.dirtyBytes != lz.pubDirty {
		lz.budget.dirty.Add(lz.dirtyBytes - lz.pubDirty)
		lz.pubDirty = lz.dirtyBytes
	}
}

// markDirty and markClean keep dirtyBytes: what the entries changed in
// the open epoch and not written yet cost, with their map slots and their
// places in the dirty list.
func (lz *lazyState[S]) markDirty(e *entry[S]) {
	e.set(flDirty)
	lz.dirtyBytes += int64(e.size)*sizeUnit + dirtyOverhead
}

func (lz *lazyState[S]) markClean(e *entry[S]) {
	e.unset(flDirty)
	lz.dirtyBytes -= int64(e.size)*sizeUnit + dirtyOverhead
}

// dirtyOverhead is what a dirty entry costs beyond its charge: its map
// slot and its place in the dirty list.
const dirtyOverhead = mapSlotBytes + 24

// keep adds a new entry to the map. With a budget it is charged, and a
// clean one (read from a partition) joins the clock at once; a new one
// (dirty) joins it once written.
func (o *statefulOp[V, S, O]) keep(key string, e *entry[S], enc int) {
	o.states[key] = e
	lz := o.lz
	if lz.budget == nil {
		return
	}
	lz.charge(e, key, enc)
	if e.s != nil {
		e.set(flQueued)
		lz.clock.push(keyed[S]{key, e})
	} else {
		e.set(flFresh)
	}
}

// queueWritten puts an entry just written (key as the dirty list has it)
// in the pending queue, unless it has a place in a queue already.
func (lz *lazyState[S]) queueWritten(key string, e *entry[S]) {
	if e.is(flQueued) {
		return
	}
	if e.is(flFresh) {
		e.unset(flFresh) // the dirty list holds the map's own copy of the key
	} else {
		key = strings.Clone(key) // the caller's: it may pin a larger string
	}
	e.set(flQueued)
	lz.pending.push(keyed[S]{key, e})
}

// touchLazy is touch with state on demand: it never looks a key up (fetch
// did) and marks the entry referenced for the eviction clock.
func (o *statefulOp[V, S, O]) touchLazy(key string) *entry[S] {
	e := o.states[key]
	if e == nil {
		key = strings.Clone(key)
		e = &entry[S]{}
		o.keep(key, e, 0)
	}
	e.set(flRef)
	if !e.is(flDirty) {
		o.lz.markDirty(e)
		o.dirty = append(o.dirty, keyed[S]{key, e})
	}
	return e
}

// fetch reads the batch's keys that are missing from memory and may be in
// a partition, in one ReadState, and adds those with state to the map.
func (o *statefulOp[V, S, O]) fetch(kvs []KV[V]) error {
	lz := o.lz
	clear(lz.seen)
	lz.miss = lz.miss[:0]
	for i := range kvs {
		k := kvs[i].Key
		if !lz.mayExist(k) || o.states[k] != nil {
			continue
		}
		if _, dup := lz.seen[k]; dup {
			continue
		}
		lz.seen[k] = struct{}{}
		lz.miss = append(lz.miss, StateKey(k))
	}
	if len(lz.miss) == 0 {
		return nil
	}
	err := lz.rd.ReadState(o.seg.x.ctx, o.step, lz.miss, func(i int, _ Epoch, v []byte) error {
		st, err := o.logic.Codec.Decode(v)
		if err != nil {
			return fmt.Errorf("key %q: %w", lz.miss[i], err)
		}
		o.keep(strings.Clone(string(lz.miss[i])), &entry[S]{s: st}, len(v))
		return nil
	})
	clear(lz.miss)
	if err != nil {
		return fmt.Errorf("step %s: read state: %w", o.step, err)
	}
	return nil
}

func (o *statefulOp[V, S, O]) pushLazy(kvs []KV[V]) error {
	lz := o.lz
	if lz.lookups() {
		if err := o.fetch(kvs); err != nil {
			return err
		}
	}
	for _, kv := range kvs {
		e := o.touchLazy(kv.Key)
		o.curKey = kv.Key
		e.s = o.logic.OnItem(kv.Key, e.s, kv.Value, o.emitFn)
	}
	if err := o.flush(); err != nil {
		return err
	}
	if lz.budget != nil {
		return o.shed()
	}
	return nil
}

// encodeState encodes st for a snapshot row (into the segment's buffer
// where the codec can append).
func (o *statefulOp[V, S, O]) encodeState(key string, st *S) ([]byte, error) {
	var b []byte
	var err error
	if app, ok := o.logic.Codec.(appender[S]); ok {
		// Into the segment's buffer, which lives until the changes are
		// handed over (recovery copies what it keeps).
		start := len(o.seg.vals)
		o.seg.vals, err = app.Append(o.seg.vals, st)
		b = o.seg.vals[start:len(o.seg.vals):len(o.seg.vals)]
	} else {
		b, err = o.logic.Codec.Encode(st)
	}
	if err != nil {
		return nil, fmt.Errorf("step %s: encode state of key %q: %w", o.step, key, err)
	}
	if b == nil {
		b = []byte{} // state that encodes to nothing is still state: only nil is a tombstone
	}
	return b, nil
}

// write records st (nil: a tombstone) as key's change of epoch e, handing
// the changes recorded so far to recovery first if there are many.
func (o *statefulOp[V, S, O]) write(key string, st *S, e Epoch) (int, error) {
	if err := o.seg.flushIfFull(); err != nil {
		return 0, err
	}
	if st == nil {
		o.seg.record(o.step, key, e, nil)
		return 0, nil
	}
	b, err := o.encodeState(key, st)
	if err != nil {
		return 0, err
	}
	o.seg.record(o.step, key, e, b)
	return len(b), nil
}

// handForTicket hands the recorded changes to recovery and returns the
// write ticket that covers them (the worker's commits so far).
func (o *statefulOp[V, S, O]) handForTicket() (uint32, error) {
	l := o.seg.x.ledgers[o.seg.worker]
	if len(o.seg.changes) > 0 {
		if err := o.seg.hand(l.frontOf(o.seg.comp)); err != nil {
			return 0, err
		}
	}
	n := l.commitCount()
	o.lz.lastTicket = n
	return uint32(n), nil
}

// snapshotLazy is snapshot with state on demand.
func (o *statefulOp[V, S, O]) snapshotLazy(e Epoch) error {
	lz := o.lz
	defer func() {
		clear(o.dirty)
		o.dirty = o.dirty[:0]
		if cap(o.dirty) > 1<<12 && lz.budget != nil {
			// One epoch's burst need not be charged for good.
			o.dirty = nil
		}
		lz.spillAt, lz.stale, lz.dirtyBytes = 0, 0, 0
	}()
	o.seg.changes = slices.Grow(o.seg.changes, min(len(o.dirty), snapshotChunk))
	written := o.dirty[:0]
	keepDead := lz.lookups()
	for _, d := range o.dirty {
		en := d.e
		if !en.is(flDirty) {
			continue // written early (spilled), and not changed since
		}
		lz.markClean(en)
		n, err := o.write(d.key, en.s, e)
		if err != nil {
			return err
		}
		if en.s == nil && !keepDead {
			// Nothing can look the key up: forget it now.
			delete(o.states, d.key)
			en.set(flDead)
			lz.uncharge(en)
			continue
		}
		lz.charge(en, d.key, n)
		written = append(written, d)
	}
	if lz.budget == nil {
		return nil // the runtime hands the changes over with the frontier
	}
	t, err := o.handForTicket()
	if err != nil {
		return err
	}
	for _, d := range written {
		d.e.wrote = t
		lz.queueWritten(d.key, d.e)
	}
	o.publish()
	return nil
}

// shed keeps the state within its bound. Once the state is within an
// eighth of it and the dirty entries (changed in the open epoch) hold more
// than half of it, the oldest-changed are written early, so that their
// writes are readable, and they can leave memory, by the time memory runs
// over. When it does run over, clean
// entries whose writes are readable leave in clock order; if that is not
// enough, dirty entries are written early, and when the state is still
// far over its bound and what frees memory is a write not yet readable,
// shed waits for that write.
func (o *statefulOp[V, S, O]) shed() error {
	lz := o.lz
	o.publish()
	avail := lz.budget.avail()
	// Near the bound, and mostly dirty: write the excess early. (A working
	// set that fits is left alone: its keys would be written again and
	// again.)
	if d := lz.budget.dirty.Load(); d > avail/2 && lz.dirtyBytes > 0 && lz.budget.used.Load() > avail-avail/8 {
		if err := o.spill(min(lz.dirtyBytes, d-avail/2)); err != nil {
			return err
		}
		o.publish()
	}
	over := lz.budget.over()
	if over <= 0 {
		return nil
	}
	if lz.peak > 1<<12 && len(o.states) < lz.peak/2 {
		o.rebuildMap()
	}
	slack := lz.budget.limit / 16
	need := over + lz.budget.limit/64 // a little more, so the next batch fits
	var freed int64
	for round := 0; ; round++ {
		freed += o.evict(need - freed)
		if freed >= need || round == 3 {
			break
		}
		if lz.unwritten() {
			if over-freed <= slack {
				break // the last write frees memory once readable
			}
			if err := lz.rd.WaitWritten(o.seg.x.ctx, o.seg.worker, lz.lastTicket); err != nil {
				return fmt.Errorf("step %s: wait for state to be written: %w", o.step, err)
			}
			continue
		}
		if err := o.spill(need - freed); err != nil {
			return err
		}
		if !lz.unwritten() {
			break // nothing left to write early
		}
	}
	o.publish()
	return nil
}

// unwritten says whether the last write of this instance is not readable
// yet.
func (lz *lazyState[S]) unwritten() bool {
	return lz.lastTicket > lz.written()
}

func (lz *lazyState[S]) written() uint64 { return lz.rd.Written(lz.worker) }

// evict lets clean entries whose writes are readable leave memory, in
// clock order, until need bytes are freed or the clock went round twice
// (an entry touched since it was last passed is kept the first time: the
// scans are paid for by the touches that set those marks).
func (o *statefulOp[V, S, O]) evict(need int64) int64 {
	lz := o.lz
	written := uint32(lz.written())
	// Written entries whose writes became readable join the clock.
	for lz.pending.len() > 0 {
		r := lz.pending.peek()
		e := r.e
		if !e.is(flDead) && !e.is(flDirty) && int32(written-e.wrote) < 0 {
			break
		}
		lz.pending.pop()
		if e.is(flDead) || e.is(flDirty) {
			e.unset(flQueued) // gone, or changed again: queued when written
			continue
		}
		lz.clock.push(r)
	}
	var freed int64
	for scan := 2 * lz.clock.len(); scan > 0 && freed < need && lz.clock.len() > 0; scan-- {
		r := lz.clock.pop()
		e := r.e
		if e.is(flDead) {
			continue // deleted since it was queued
		}
		if e.is(flDirty) {
			e.unset(flQueued) // changed: queued again once written
			continue
		}
		if int32(written-e.wrote) < 0 {
			lz.clock.push(r) // written again, not readable yet
			continue
		}
		if e.is(flRef) {
			e.unset(flRef) // a second chance
			lz.clock.push(r)
			continue
		}
		delete(o.states, r.key)
		e.unset(flQueued)
		e.set(flDead)
		if e.s != nil && !lz.onDisk {
			lz.evicted.add(r.key)
			lz.evictedAny = true
		}
		freed += lz.uncharge(e)
	}
	return freed
}

// rebuildMap copies the map into one of its current size: a Go map keeps
// the memory of its largest size.
func (o *statefulOp[V, S, O]) rebuildMap() {
	m := make(map[string]*entry[S], len(o.states))
	for k, e := range o.states {
		m[k] = e
	}
	o.states = m
	o.lz.peak = len(m)
}

// spill writes dirty entries early (as changes of the open epoch), the
// least recently changed first, until they account for need bytes: they
// leave memory once readable. The dirty list is walked as a clock: an
// entry touched since the hand last passed it is kept the first time.
// Entries written early leave the dirty list (it is compacted once they
// are half of it), so that it holds no more than the cache.
func (o *statefulOp[V, S, O]) spill(need int64) error {
	lz := o.lz
	var freed int64
	spilled := lz.spilled[:0]
	for visits := 2 * len(o.dirty); freed < need && visits > 0; visits-- {
		if lz.spillAt >= len(o.dirty) {
			lz.spillAt = 0
		}
		d := o.dirty[lz.spillAt]
		lz.spillAt++
		e := d.e
		if !e.is(flDirty) {
			continue
		}
		if e.is(flRef) {
			e.unset(flRef) // touched lately: written when the hand comes back
			continue
		}
		lz.markClean(e)
		nb, err := o.write(d.key, e.s, lz.cur)
		if err != nil {
			return err
		}
		lz.charge(e, d.key, nb)
		freed += int64(e.size)*sizeUnit + dirtyOverhead
		spilled = append(spilled, d)
		if len(spilled) == snapshotChunk {
			// Handed over in pieces: the list of what was written stays small.
			if err := o.spilledWritten(spilled); err != nil {
				return err
			}
			spilled = spilled[:0]
		}
	}
	lz.spilled = spilled
	if err := o.spilledWritten(spilled); err != nil {
		return err
	}
	if lz.stale > 1024 && lz.stale >= len(o.dirty)/2 {
		o.compactDirty()
	}
	return nil
}

// spilledWritten hands the entries just written early to recovery, and
// queues them to leave memory once readable.
func (o *statefulOp[V, S, O]) spilledWritten(spilled []keyed[S]) error {
	if len(spilled) == 0 {
		return nil
	}
	t, err := o.handForTicket()
	if err != nil {
		return err
	}
	for _, d := range spilled {
		d.e.wrote = t
		o.lz.queueWritten(d.key, d.e)
	}
	clear(spilled)
	o.lz.stale += len(spilled)
	return nil
}

// compactDirty drops from the dirty list the entries that are no longer
// dirty (written early) and the second places of entries changed again
// since, keeping the order and the clock hand's place.
func (o *statefulOp[V, S, O]) compactDirty() {
	lz := o.lz
	j, at := 0, -1
	for i, d := range o.dirty {
		if i == lz.spillAt {
			at = j
		}
		if !d.e.is(flDirty) || d.e.is(flListed) {
			continue
		}
		d.e.set(flListed)
		o.dirty[j] = d
		j++
	}
	if at < 0 {
		at = j
	}
	for _, d := range o.dirty[:j] {
		d.e.unset(flListed)
	}
	clear(o.dirty[j:])
	o.dirty = o.dirty[:j]
	if cap(o.dirty) > 1<<12 && 4*j < cap(o.dirty) {
		o.dirty = append(make([]keyed[S], 0, 2*j), o.dirty...)
	}
	lz.spillAt, lz.stale = at, 0
}

// finishLazy runs OnEOF over the keys in memory and, in the same key
// order, the keys of this pass that only the partitions hold.
func (o *statefulOp[V, S, O]) finishLazy(final Epoch) error {
	lz := o.lz
	lz.cur = final
	mem := make([]keyed[S], 0, len(o.states))
	for k, e := range o.states {
		mem = append(mem, keyed[S]{k, e})
	}
	slices.SortFunc(mem, func(a, b keyed[S]) int { return strings.Compare(a.key, b.key) })
	visit := func(k string, e *entry[S]) error {
		if e.s == nil {
			return nil
		}
		o.curKey = k
		next, changed := o.logic.OnEOF(k, e.s, o.emitFn)
		if changed || next != e.s {
			e = o.touchLazy(k)
		}
		e.s = next
		return o.flushIfBig()
	}
	i := 0
	if lz.lookups() {
		x := o.seg.x
		mine := KeyShare{Worker: o.seg.worker, Workers: x.workers}
		err := lz.rd.ScanState(x.ctx, o.step, o.previousEnd, o.logic.EOFForEveryKey, mine, func(rows []Loaded) error {
			for _, r := range rows {
				k := string(r.Key)
				for i < len(mem) && mem[i].key < k {
					if err := visit(mem[i].key, mem[i].e); err != nil {
						return err
					}
					i++
				}
				if i < len(mem) && mem[i].key == k {
					continue // memory holds it (newer, or the same)
				}
				st, err := o.logic.Codec.Decode(r.Value)
				if err != nil {
					return fmt.Errorf("key %q: %w", k, err)
				}
				o.curKey = k
				next, changed := o.logic.OnEOF(k, st, o.emitFn)
				if changed || next != st {
					if _, err := o.write(k, next, final); err != nil {
						return err
					}
				}
				if err := o.flushIfBig(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("step %s: end of input: %w", o.step, err)
		}
	}
	for ; i < len(mem); i++ {
		if err := visit(mem[i].key, mem[i].e); err != nil {
			return err
		}
	}
	return o.flush()
}

func (o *statefulOp[V, S, O]) flushIfBig() error {
	if len(o.obuf) >= batchSize {
		return o.flush()
	}
	return nil
}

// ring is a FIFO of keyed entries (the eviction clock), a circular
// buffer.
type ring[S any] struct {
	buf  []keyed[S]
	head int
	n    int
}

func (r *ring[S]) len() int { return r.n }

func (r *ring[S]) bytes() int64 { return 24 * int64(len(r.buf)) }

func (r *ring[S]) push(k keyed[S]) {
	if r.n == len(r.buf) {
		r.resize(max(1024, 2*len(r.buf)))
	}
	i := r.head + r.n
	if i >= len(r.buf) {
		i -= len(r.buf)
	}
	r.buf[i] = k
	r.n++
}

func (r *ring[S]) peek() keyed[S] { return r.buf[r.head] }

func (r *ring[S]) pop() keyed[S] {
	k := r.buf[r.head]
	r.buf[r.head] = keyed[S]{}
	r.head++
	if r.head == len(r.buf) {
		r.head = 0
	}
	r.n--
	if len(r.buf) > 1<<14 && r.n < len(r.buf)/4 {
		r.resize(len(r.buf) / 2)
	}
	return k
}

func (r *ring[S]) resize(size int) {
	nb := make([]keyed[S], size)
	for i := 0; i < r.n; i++ {
		j := r.head + i
		if j >= len(r.buf) {
			j -= len(r.buf)
		}
		nb[i] = r.buf[j]
	}
	r.buf, r.head = nb, 0
}

// keySet is a filter of the keys evicted with state: a key it has not
// seen is not in any partition (when the step had no state at the start).
// It grows in layers of bloom filters, each four times the last, of 12
// bits a key (about 1% false positives a layer, so a few percent in all:
// those keys are looked up for nothing).
type keySet struct {
	seed   maphash.Seed
	layers []keyLayer
}

type keyLayer struct {
	words []uint64
	n     int // keys added
	cap   int
}

func newKeySet() *keySet { return &keySet{seed: maphash.MakeSeed()} }

func keyBits(h uint64, words int) (int, uint64) {
	w := int(uint64(uint32(h>>32)) * uint64(words) >> 32)
	return w, 1<<(h&63) | 1<<(h>>6&63) | 1<<(h>>12&63)
}

func (s *keySet) add(k string) {
	if len(s.layers) == 0 || s.layers[len(s.layers)-1].n == s.layers[len(s.layers)-1].cap {
		c := 1 << 18
		if len(s.layers) > 0 {
			c = 4 * s.layers[len(s.layers)-1].cap
		}
		s.layers = append(s.layers, keyLayer{words: make([]uint64, c*12/64), cap: c})
	}
	l := &s.layers[len(s.layers)-1]
	w, bits := keyBits(maphash.String(s.seed, k), len(l.words))
	l.words[w] |= bits
	l.n++
}

func (s *keySet) has(k string) bool {
	h := maphash.String(s.seed, k)
	for i := range s.layers {
		l := &s.layers[i]
		if w, bits := keyBits(h, len(l.words)); l.words[w]&bits == bits {
			return true
		}
	}
	return false
}

// bytes is the memory the set holds.
func (s *keySet) bytes() int64 {
	if s == nil {
		return 0
	}
	var n int64
	for _, l := range s.layers {
		n += 8 * int64(len(l.words))
	}
	return n
}
