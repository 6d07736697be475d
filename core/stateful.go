package core

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// KeyedLogic is the per-key behaviour of a stateful step. State is *S; nil
// means the key has no state. Returning nil discards the key's state (a
// tombstone in the next snapshot).
type KeyedLogic[V, S, O any] struct {
	// OnItem is called for every item of the key, in arrival order.
	OnItem func(key string, state *S, v V, emit func(O)) *S
	// OnEOF, if set, is called at end of input, in key order, for every key
	// that has state and changed in this pass over the input: touched by
	// this run, or changed after the previous end of input by a run this
	// one resumes (RunInfo.PreviousEnd). A key left alone since then is not
	// visited (so a continuation over a little more input costs in
	// proportion to what it read). Set EOFForEveryKey to visit every key
	// with state. It reports whether it changed the state (so only changed
	// keys are snapshotted).
	OnEOF func(key string, state *S, emit func(O)) (next *S, changed bool)
	// EOFForEveryKey makes OnEOF visit every key that has state, changed in
	// this pass or not.
	EOFForEveryKey bool
	// Codec encodes state for snapshots; nil means DefaultCodec[S]().
	Codec Codec[S]
	// Init, if set, is called on every worker's instance before the first
	// item, with the run's RunInfo (identical on every worker).
	Init func(RunInfo)
}

// Stateful adds a keyed step with per-key state. Its output keeps the key.
func Stateful[V, S, O any](s Stream[KV[V]], name string, l KeyedLogic[V, S, O]) Stream[KV[O]] {
	if l.Codec == nil {
		l.Codec = DefaultCodec[S]()
	}
	n := s.n.flow.add(s.n, name, kindExchanged)
	if l.OnItem == nil && n.flow.err == nil {
		n.flow.err = fmt.Errorf("step %s: KeyedLogic.OnItem is required", n.id)
	}
	n.exchanged = &statefulImpl[V, S, O]{logic: l}
	return Stream[KV[O]]{n}
}

// StatefulMap keeps per-key state: fn gets the key's state (nil at first) and
// an item, and returns the new state (nil discards it) and a value to emit.
func StatefulMap[V, S, O any](s Stream[KV[V]], name string, fn func(state *S, v V) (*S, O)) Stream[KV[O]] {
	return Stateful(s, name, KeyedLogic[V, S, O]{
		OnItem: func(_ string, st *S, v V, emit func(O)) *S {
			next, out := fn(st, v)
			emit(out)
			return next
		},
	})
}

// Fold folds every item of a key into an accumulator and emits the final
// accumulator at end of input, then discards it.
func Fold[V, A any](s Stream[KV[V]], name string, init func() A, fn func(acc A, v V) A) Stream[KV[A]] {
	return Stateful(s, name, KeyedLogic[V, A, A]{
		OnItem: func(_ string, st *A, v V, _ func(A)) *A {
			if st == nil {
				a := init()
				st = &a
			}
			*st = fn(*st, v)
			return st
		},
		OnEOF: func(_ string, st *A, emit func(A)) (*A, bool) {
			emit(*st)
			return nil, true
		},
	})
}

// Reduce combines the items of a key pairwise and emits the result at end of
// input, then discards it.
func Reduce[V any](s Stream[KV[V]], name string, fn func(acc, v V) V) Stream[KV[V]] {
	return Stateful(s, name, KeyedLogic[V, V, V]{
		OnItem: func(_ string, st *V, v V, _ func(V)) *V {
			if st == nil {
				return &v
			}
			*st = fn(*st, v)
			return st
		},
		OnEOF: func(_ string, st *V, emit func(V)) (*V, bool) {
			emit(*st)
			return nil, true
		},
	})
}

type statefulImpl[V, S, O any] struct{ logic KeyedLogic[V, S, O] }

func (s *statefulImpl[V, S, O]) sender(x *execution, target *node, from int) op {
	w := uint64(x.workers)
	return newExchangeSender[KV[V]](x, target, from, func(kv KV[V]) int { return int(KeyHash(kv.Key) % w) })
}

func (s *statefulImpl[V, S, O]) wire() wireCodec { return wireFor[KV[V]]() }

func (s *statefulImpl[V, S, O]) root(seg *segment, out op) rootOp {
	o := &statefulOp[V, S, O]{seg: seg, step: seg.node.id, logic: s.logic, out: out, states: map[string]*entry[S]{}}
	o.emitFn = func(v O) { o.obuf = append(o.obuf, KV[O]{Key: o.curKey, Value: v}) }
	return o
}

// entry is one key's state. It is kept small (16 bytes): every item of the
// key reads it, and a large state's entries should stay in the CPU cache.
type entry[S any] struct {
	s *S
	// wrote is the write ticket of the commit that last wrote the state
	// (state on demand: the entry may leave memory once recovery says that
	// commit is readable).
	wrote uint32
	// size is the memory the entry is accounted for, in sizeUnit bytes
	// (bounded state only).
	size uint16
	fl   entryFlags
}

type entryFlags uint8

const (
	flDirty    entryFlags = 1 << iota // changed in the current epoch
	flRestored                        // in the restored index, not (yet) in the map
	flDead                            // deleted from the map (a later touch makes a new entry)
	flRef                             // touched since the eviction clock last passed it
	flQueued                          // in the eviction clock's or the pending ring
	flFresh                           // made by this run, never queued: the dirty list holds the map's key
	flListed                          // seen while the dirty list is compacted
)

func (e *entry[S]) is(f entryFlags) bool { return e.fl&f != 0 }
func (e *entry[S]) set(f entryFlags)     { e.fl |= f }
func (e *entry[S]) unset(f entryFlags)   { e.fl &^= f }

// keyed is an entry and its key, where a list needs both.
type keyed[S any] struct {
	key string
	e   *entry[S]
}

type statefulOp[V, S, O any] struct {
	restoreLock
	seg    *segment
	step   StepID
	logic  KeyedLogic[V, S, O]
	out    op
	states map[string]*entry[S] // keys touched by this run
	// restored holds the loaded keys this run has not touched yet (nil if
	// nothing was loaded); hint sizes it.
	restored *restoredIndex[S]
	hint     int
	dirty    []keyed[S] // changed in the current epoch: snapshot them without looking them up
	// previousEnd is the epoch of the previous end of input: restored keys
	// changed after it are in the current pass (see OnEOF).
	previousEnd Epoch
	// lz, if set, reads state on demand (and bounds it): see statemem.go.
	lz     *lazyState[S]
	obuf   []KV[O]
	curKey string
	emitFn func(O)
}

// decoderInto is a Codec that decodes into a state it is given (so a batch
// of restored states is one allocation, not one per key).
type decoderInto[S any] interface {
	DecodeInto(b []byte, s *S) error
}

// presize sizes the index of restored keys for n keys before a load.
func (o *statefulOp[V, S, O]) presize(n int) {
	o.mu.Lock()
	o.hint = n
	o.mu.Unlock()
}

// restore decodes a batch of loaded rows (entries and, where the codec
// can, states allocated together) and adds them to the restored index
// under one lock.
func (o *statefulOp[V, S, O]) restore(rows []Loaded) error {
	di, into := o.logic.Codec.(decoderInto[S])
	var slabs []restoredSlab[S]
	for len(rows) > 0 {
		n := min(len(rows), slabSize)
		ents := make([]entry[S], n)
		keys := make([]string, n)
		epochs := make([]Epoch, n)
		var states []S
		if into {
			states = make([]S, n)
		}
		for i, r := range rows[:n] {
			ents[i] = entry[S]{fl: flRestored}
			keys[i], epochs[i] = string(r.Key), r.Epoch
			if into {
				if err := di.DecodeInto(r.Value, &states[i]); err != nil {
					return fmt.Errorf("key %q: %w", r.Key, err)
				}
				ents[i].s = &states[i]
				continue
			}
			st, err := o.logic.Codec.Decode(r.Value)
			if err != nil {
				return fmt.Errorf("key %q: %w", r.Key, err)
			}
			ents[i].s = st
		}
		slabs = append(slabs, restoredSlab[S]{ents, keys, epochs})
		rows = rows[n:]
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.restored == nil {
		o.restored = newRestoredIndex[S](o.hint)
	}
	for _, sl := range slabs {
		o.restored.add(sl)
	}
	return nil
}

func (o *statefulOp[V, S, O]) open(ctx context.Context) error {
	ri := RunInfoFrom(ctx)
	// Restored keys changed after the previous end of input belong to the
	// pass this run continues (finish visits them).
	o.previousEnd = ri.PreviousEnd
	if o.logic.Init != nil {
		o.logic.Init(ri)
	}
	return nil
}

func (o *statefulOp[V, S, O]) close() error { return nil }

func (o *statefulOp[V, S, O]) touch(key string) *entry[S] {
	e := o.states[key]
	if e == nil && o.restored != nil {
		var k string
		if k, e = o.restored.take(key); e != nil {
			key = k
			o.states[key] = e
		}
	}
	if e == nil {
		// Keys are often slices of a larger string (a line); keep only the key.
		key = strings.Clone(key)
		e = &entry[S]{}
		o.states[key] = e
	}
	if !e.is(flDirty) {
		e.set(flDirty)
		// The dirty list may hold the caller's key until the epoch's
		// snapshot (the map holds an owned copy).
		o.dirty = append(o.dirty, keyed[S]{key, e})
	}
	return e
}

func (o *statefulOp[V, S, O]) push(b any) error {
	if o.lz != nil {
		return o.pushLazy(*b.(*[]KV[V]))
	}
	for _, kv := range *b.(*[]KV[V]) {
		e := o.touch(kv.Key)
		o.curKey = kv.Key
		e.s = o.logic.OnItem(kv.Key, e.s, kv.Value, o.emitFn)
	}
	return o.flush()
}

func (o *statefulOp[V, S, O]) flush() error {
	if len(o.obuf) == 0 {
		return nil
	}
	err := o.out.push(o.obuf)
	clear(o.obuf)
	o.obuf = o.obuf[:0]
	return err
}

// snapshot records the keys changed in epoch e: their encoded state, or a
// tombstone for discarded keys.
func (o *statefulOp[V, S, O]) snapshot(e Epoch) error {
	if o.lz != nil {
		return o.snapshotLazy(e)
	}
	if o.seg.x.rec == nil {
		// Nothing keeps snapshots: forget discarded keys, encode nothing.
		for _, d := range o.dirty {
			d.e.unset(flDirty)
			if d.e.s == nil {
				delete(o.states, d.key)
				d.e.set(flDead)
			}
		}
		clear(o.dirty)
		o.dirty = o.dirty[:0]
		return nil
	}
	o.seg.changes = slices.Grow(o.seg.changes, min(len(o.dirty), snapshotChunk))
	for i, d := range o.dirty {
		if err := o.seg.flushIfFull(); err != nil {
			clear(o.dirty[i:])
			o.dirty = o.dirty[:0]
			return err
		}
		k, en := d.key, d.e
		en.unset(flDirty)
		if en.s == nil {
			delete(o.states, k)
			en.set(flDead)
			o.seg.record(o.step, k, e, nil)
			continue
		}
		b, err := o.encodeState(k, en.s)
		if err != nil {
			return err
		}
		o.seg.record(o.step, k, e, b)
	}
	clear(o.dirty)
	o.dirty = o.dirty[:0]
	return nil
}

func (o *statefulOp[V, S, O]) drain() error {
	if err := o.flush(); err != nil {
		return err
	}
	return o.out.drain()
}

func (o *statefulOp[V, S, O]) advance(from, to Epoch) error {
	if err := o.snapshot(from); err != nil {
		return err
	}
	if o.lz != nil {
		o.lz.cur = to
	}
	return o.out.advance(from, to)
}

func (o *statefulOp[V, S, O]) finish(final Epoch) error {
	if o.lz != nil && o.logic.OnEOF != nil {
		if err := o.finishLazy(final); err != nil {
			return err
		}
	} else if o.logic.OnEOF != nil {
		// The pass is every key this run touched (the map holds exactly
		// those) and every restored key changed after the previous end of
		// input; EOFForEveryKey adds the other restored keys. The list is
		// made here, once and at its size: a list kept up as keys were
		// touched cost a quarter of the state map's memory all run long.
		visit := make([]keyed[S], 0, len(o.states))
		for k, e := range o.states {
			if e.s != nil && !e.is(flDead) {
				visit = append(visit, keyed[S]{k, e})
			}
		}
		if o.restored != nil {
			o.restored.each(func(k string, e *entry[S], epoch Epoch) {
				if e.s != nil && (o.logic.EOFForEveryKey || epoch > o.previousEnd) {
					visit = append(visit, keyed[S]{k, e})
				}
			})
		}
		slices.SortFunc(visit, func(a, b keyed[S]) int { return strings.Compare(a.key, b.key) })
		for _, v := range visit {
			k, e := v.key, v.e
			o.curKey = k
			next, changed := o.logic.OnEOF(k, e.s, o.emitFn)
			if changed || next != e.s {
				e = o.touch(k)
			}
			e.s = next
			if len(o.obuf) >= batchSize {
				if err := o.flush(); err != nil {
					return err
				}
			}
		}
		if err := o.flush(); err != nil {
			return err
		}
	}
	if err := o.snapshot(final); err != nil {
		return err
	}
	return o.out.finish(final)
}
