package core

import (
	"sort"
	"time"
)

// WindowConfig configures tumbling event-time windows.
type WindowConfig[V any] struct {
	// Size of each window; windows are aligned to the Unix epoch.
	Size time.Duration
	// Lateness is how far behind the newest event time seen for a key an
	// item may be and still count: a window [start, end) closes once the
	// key's newest event time reaches end+Lateness.
	Lateness time.Duration
	// Time extracts an item's event time.
	Time func(V) time.Time
}

// WindowEvent is what TumblingFold emits: a closed window with its
// accumulator, or an item that arrived after its window closed (Late), which
// is reported rather than dropped.
type WindowEvent[V, A any] struct {
	Start, End time.Time
	Value      A    // accumulator of a closed window
	Late       bool // Item arrived after its window closed
	Item       V    // the late item
}

// windowState is one key's open windows. The watermark is per key, so which
// items are late depends only on that key's own items, in order: the result
// does not depend on how many workers run the flow.
type windowState[A any] struct {
	MaxSeen int64       `json:"max_seen"` // newest event time seen, Unix ns
	Open    map[int64]A `json:"open"`     // window start (Unix ns) -> accumulator
}

// TumblingFold folds each key's items into tumbling event-time windows. A
// window is emitted when it closes, or at end of input; items for closed
// windows are emitted as Late events.
func TumblingFold[V, A any](s Stream[KV[V]], name string, cfg WindowConfig[V], init func() A, fold func(A, V) A) Stream[KV[WindowEvent[V, A]]] {
	size := int64(cfg.Size)
	late := int64(cfg.Lateness)
	if size <= 0 && s.n.flow.err == nil {
		s.n.flow.err = errWindowSize
	}
	startOf := func(t int64) int64 {
		st := t - t%size
		if t%size < 0 {
			st -= size
		}
		return st
	}
	emitClosed := func(st *windowState[A], upTo int64, emit func(WindowEvent[V, A])) {
		var starts []int64
		for w := range st.Open {
			if w+size+late <= upTo {
				starts = append(starts, w)
			}
		}
		sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
		for _, w := range starts {
			emit(WindowEvent[V, A]{Start: time.Unix(0, w).UTC(), End: time.Unix(0, w+size).UTC(), Value: st.Open[w]})
			delete(st.Open, w)
		}
	}
	return Stateful(s, name, KeyedLogic[V, windowState[A], WindowEvent[V, A]]{
		Codec: JSONCodec[windowState[A]]{},
		OnItem: func(_ string, st *windowState[A], v V, emit func(WindowEvent[V, A])) *windowState[A] {
			t := cfg.Time(v).UnixNano()
			if st == nil {
				st = &windowState[A]{MaxSeen: t, Open: map[int64]A{}}
			}
			w := startOf(t)
			if w+size+late <= st.MaxSeen {
				emit(WindowEvent[V, A]{Start: time.Unix(0, w).UTC(), End: time.Unix(0, w+size).UTC(), Late: true, Item: v})
				return st
			}
			acc, ok := st.Open[w]
			if !ok {
				acc = init()
			}
			st.Open[w] = fold(acc, v)
			if t > st.MaxSeen {
				st.MaxSeen = t
				emitClosed(st, t, emit)
			}
			return st
		},
		OnEOF: func(_ string, st *windowState[A], emit func(WindowEvent[V, A])) (*windowState[A], bool) {
			if len(st.Open) == 0 {
				return st, false
			}
			emitClosed(st, 1<<63-1, emit)
			return st, true
		},
	})
}
