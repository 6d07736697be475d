package core

import (
	"hash/maphash"
	"runtime/debug"
	"sync"
)

// restoredIndex holds the entries a stateful instance loaded at resume until
// they are first touched. Loading a key costs an append, not a Go map insert
// (whose probing, growth and GC scanning were most of the cost of a
// resume), and a key that the run never touches is never inserted into the
// map at all: a continuation over a little more input pays for what it
// reads, not for the whole state.
//
// Entries live in slabs of at most slabSize, one or more per restore batch;
// a slot refers to an entry by slab and offset. Slots are spread by the top
// bits of the key's hash over many small open-addressing tables, built at
// the first lookup (about 20ns a key): appending to a few hundred buckets and then filling
// tables that fit in the CPU cache is far cheaper than filling one large
// table at random. An entry leaves the index when it is taken (its restored
// flag goes false); its slot stays, and a lookup that lands on it finds
// nothing.
type restoredIndex[S any] struct {
	seed    maphash.Seed
	slabs   []restoredSlab[S]
	shift   uint             // 64 - log2(buckets)
	pending [][]restoredSlot // per bucket, until built
	tables  [][]restoredSlot // per bucket, once built
}

// restoredSlab is up to slabSize loaded entries, their keys and the epochs
// of their rows.
type restoredSlab[S any] struct {
	ents   []entry[S]
	keys   []string
	epochs []Epoch
}

type restoredSlot struct {
	tag uint32 // low 32 bits of the key's hash
	ref uint32 // slab<<slabBits | offset, plus one; 0: empty
}

const (
	slabBits = 12
	slabSize = 1 << slabBits
)

// newRestoredIndex sizes an index for about expect entries (0: unknown).
func newRestoredIndex[S any](expect int) *restoredIndex[S] {
	bits := uint(8)
	for bits < 16 && expect>>bits > 2048 {
		bits++
	}
	return &restoredIndex[S]{seed: maphash.MakeSeed(), shift: 64 - bits, pending: make([][]restoredSlot, 1<<bits)}
}

// add adds a slab of entries (at most slabSize).
func (ix *restoredIndex[S]) add(slab restoredSlab[S]) {
	if ix.tables != nil {
		panic("core: restoredIndex.add after the first lookup")
	}
	base := uint32(len(ix.slabs)) << slabBits
	ix.slabs = append(ix.slabs, slab)
	for off := range slab.ents {
		h := maphash.String(ix.seed, slab.keys[off])
		b := h >> ix.shift
		ix.pending[b] = append(ix.pending[b], restoredSlot{tag: uint32(h), ref: base | uint32(off) + 1})
	}
}

// at returns the entry a slot refers to, its key and its row's epoch.
func (ix *restoredIndex[S]) at(ref uint32) (*entry[S], string, Epoch) {
	r := ref - 1
	sl, off := &ix.slabs[r>>slabBits], r&(slabSize-1)
	return &sl.ents[off], sl.keys[off], sl.epochs[off]
}

// build fills each bucket's table from its pending slots.
func (ix *restoredIndex[S]) build() {
	ix.tables = make([][]restoredSlot, len(ix.pending))
	for b, pend := range ix.pending {
		if len(pend) == 0 {
			continue
		}
		size := 8
		for size < 2*len(pend) {
			size *= 2
		}
		t := make([]restoredSlot, size)
		mask := uint32(size - 1)
		for _, p := range pend {
			for i := p.tag & mask; ; i = (i + 1) & mask {
				s := t[i]
				if s.ref == 0 {
					t[i] = p
					break
				}
				if s.tag != p.tag {
					continue
				}
				// A key loaded twice (Load promises once): the newer row wins.
				old, oldKey, oldEpoch := ix.at(s.ref)
				if e, key, epoch := ix.at(p.ref); oldKey == key {
					if epoch > oldEpoch {
						old.unset(flRestored)
						t[i] = p
					} else {
						e.unset(flRestored)
					}
					break
				}
			}
		}
		ix.tables[b] = t
	}
	ix.pending = nil
}

// take returns the restored entry of key (and the index's copy of the key)
// and removes it from the index, or returns nil.
func (ix *restoredIndex[S]) take(key string) (string, *entry[S]) {
	if ix.tables == nil {
		ix.build()
	}
	h := maphash.String(ix.seed, key)
	t := ix.tables[h>>ix.shift]
	if len(t) == 0 {
		return "", nil
	}
	tag, mask := uint32(h), uint32(len(t)-1)
	for i := tag & mask; ; i = (i + 1) & mask {
		s := t[i]
		if s.ref == 0 {
			return "", nil
		}
		if s.tag != tag {
			continue
		}
		if e, k, _ := ix.at(s.ref); k == key {
			if !e.is(flRestored) {
				return "", nil // taken before (and perhaps deleted since)
			}
			e.unset(flRestored)
			return k, e
		}
	}
}

// each calls fn for every entry still in the index, with its key and its
// row's epoch.
func (ix *restoredIndex[S]) each(fn func(key string, e *entry[S], epoch Epoch)) {
	if ix.tables == nil {
		ix.build() // which settles keys loaded twice
	}
	for _, sl := range ix.slabs {
		for i := range sl.ents {
			if sl.ents[i].is(flRestored) {
				fn(sl.keys[i], &sl.ents[i], sl.epochs[i])
			}
		}
	}
}

// gcPause turns the garbage collector off while state loads (the loaded
// state is live memory: collecting while it grows only rescans it, several
// times) and returns the function that turns it back on. Nested and
// concurrent loads share one pause. A memory limit (GOMEMLIMIT) still
// applies while the collector is off.
func gcPause() (resume func()) {
	gcPauseMu.Lock()
	defer gcPauseMu.Unlock()
	if gcPauses == 0 {
		gcPausedPercent = debug.SetGCPercent(-1)
	}
	gcPauses++
	var once sync.Once
	return func() {
		once.Do(func() {
			gcPauseMu.Lock()
			defer gcPauseMu.Unlock()
			gcPauses--
			if gcPauses == 0 {
				debug.SetGCPercent(gcPausedPercent)
			}
		})
	}
}

var (
	gcPauseMu       sync.Mutex
	gcPauses        int
	gcPausedPercent int
)
