package recovery

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
)

// A segment is the changelog of one commit at one epoch in one partition:
// the changed keys, sorted, each with its new value or a tombstone, in one
// BLOB:
//
//	byte(1) (format)  uvarint(number of entries)
//	{ uvarint(len k) k  byte(0 value | 1 tombstone)  [uvarint(len v) v] }
//
// k is a partition key: uvarint(step number) followed by the state key's
// bytes (see keys.go). Entries are in bytewise order of k, the order of the
// base table's primary key, so segments and the base merge in one pass.
const segmentFormat = 1

// entry is one changed key of a segment (or a base row, during merges).
// For a tombstone, val is nil.
type entry struct {
	k     []byte
	epoch Epoch
	tomb  bool
	val   []byte
}

// encodeSegment encodes entries, which must be sorted by k with no
// duplicates.
func encodeSegment(dst []byte, es []entry) []byte {
	dst = append(dst, segmentFormat)
	dst = binary.AppendUvarint(dst, uint64(len(es)))
	for i := range es {
		dst = appendEntry(dst, &es[i])
	}
	return dst
}

// appendEntry appends one entry as a segment holds it.
func appendEntry(dst []byte, e *entry) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(e.k)))
	dst = append(dst, e.k...)
	if e.tomb {
		return append(dst, 1)
	}
	dst = append(dst, 0)
	dst = binary.AppendUvarint(dst, uint64(len(e.val)))
	return append(dst, e.val...)
}

// segmentIter walks a segment's entries; k and val alias the blob.
type segmentIter struct {
	b     []byte
	epoch Epoch
	left  uint64
	cur   entry
	err   error
}

// eachSegment hands fn each segment of an epoch below `below`, in epoch
// and sequence order, as an iterator over its entries.
func eachSegment(ctx context.Context, q queryer, below Epoch, fn func(*segmentIter) error) error {
	rows, err := q.QueryContext(ctx, `SELECT epoch, data FROM segments WHERE epoch < ? ORDER BY epoch, seq`, int64(below))
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var e Epoch
		var data []byte
		if err := rows.Scan(&e, &data); err != nil {
			return err
		}
		it, err := newSegmentIter(data, e)
		if err != nil {
			return err
		}
		if err := fn(it); err != nil {
			return err
		}
	}
	return rows.Err()
}

func newSegmentIter(b []byte, epoch Epoch) (*segmentIter, error) {
	if len(b) < 2 || b[0] != segmentFormat {
		return nil, fmt.Errorf("%w: segment of epoch %d: unknown format", ErrCorrupt, epoch)
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > uint64(len(b)) {
		return nil, fmt.Errorf("%w: segment of epoch %d: bad entry count", ErrCorrupt, epoch)
	}
	return &segmentIter{b: b[1+k:], epoch: epoch, left: n}, nil
}

// next advances to the next entry; false at the end or on a malformed
// entry (then err is set).
func (it *segmentIter) next() bool {
	if it.left == 0 {
		if len(it.b) != 0 && it.err == nil {
			it.err = fmt.Errorf("%w: segment of epoch %d: trailing bytes", ErrCorrupt, it.epoch)
		}
		return false
	}
	it.left--
	bad := func() bool {
		it.err = fmt.Errorf("%w: segment of epoch %d: malformed entry", ErrCorrupt, it.epoch)
		it.left = 0
		return false
	}
	l, n := binary.Uvarint(it.b)
	if n <= 0 || uint64(len(it.b)-n) < l+1 {
		return bad()
	}
	prev := it.cur.k
	it.cur = entry{k: it.b[n : n+int(l) : n+int(l)], epoch: it.epoch}
	if prev != nil && bytes.Compare(prev, it.cur.k) >= 0 {
		return bad() // not sorted: merges would go wrong
	}
	b := it.b[n+int(l):]
	switch b[0] {
	case 1:
		it.cur.tomb = true
		it.b = b[1:]
	case 0:
		vl, m := binary.Uvarint(b[1:])
		if m <= 0 || uint64(len(b)-1-m) < vl {
			return bad()
		}
		it.cur.val = b[1+m : 1+m+int(vl) : 1+m+int(vl)]
		it.b = b[1+m+int(vl):]
	default:
		return bad()
	}
	return true
}

// cursor is a sorted source of entries for merging: a segment, or the base.
type cursor interface {
	next() bool
	entry() *entry
	error() error
}

func (it *segmentIter) entry() *entry { return &it.cur }
func (it *segmentIter) error() error  { return it.err }

// merger merges cursors in k order; for each k it yields the entry of the
// newest epoch (of equal epochs, the cursor given last).
type merger struct {
	h    cursorHeap
	out  entry // valid until the next call; k and val are the merger's copies
	kbuf []byte
	vbuf []byte
	err  error
}

type heapItem struct {
	c   cursor
	ord int
}

type cursorHeap []heapItem

func (h cursorHeap) Len() int { return len(h) }
func (h cursorHeap) Less(i, j int) bool {
	if c := bytes.Compare(h[i].c.entry().k, h[j].c.entry().k); c != 0 {
		return c < 0
	}
	return h[i].ord < h[j].ord
}
func (h cursorHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *cursorHeap) Push(x any)   { *h = append(*h, x.(heapItem)) }
func (h *cursorHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func newMerger(cs []cursor) *merger {
	m := &merger{vbuf: make([]byte, 0, 64)}
	for i, c := range cs {
		if c.next() {
			m.h = append(m.h, heapItem{c, i})
		} else if err := c.error(); err != nil {
			m.err = err
		}
	}
	heap.Init(&m.h)
	return m
}

// next yields the next key's newest entry in m.out; false at the end or on
// error (m.err).
func (m *merger) next() bool {
	if m.err != nil || len(m.h) == 0 {
		return false
	}
	if len(m.h) == 1 {
		// One source left: no heap, no comparisons (a cursor's keys are
		// distinct and sorted).
		c := m.h[0].c
		e := c.entry()
		m.kbuf = append(m.kbuf[:0], e.k...)
		m.vbuf = append(m.vbuf[:0], e.val...)
		m.out.k, m.out.epoch, m.out.tomb, m.out.val = m.kbuf, e.epoch, e.tomb, m.vbuf
		if m.out.tomb {
			m.out.val = nil
		}
		if !c.next() {
			if err := c.error(); err != nil {
				m.err = err
				return false
			}
			m.h = m.h[:0]
		}
		return true
	}
	m.kbuf = append(m.kbuf[:0], m.h[0].c.entry().k...)
	first := true
	for len(m.h) > 0 && bytes.Equal(m.h[0].c.entry().k, m.kbuf) {
		c := m.h[0].c
		if e := c.entry(); first || e.epoch >= m.out.epoch {
			m.out.epoch, m.out.tomb = e.epoch, e.tomb
			m.vbuf = append(m.vbuf[:0], e.val...)
			first = false
		}
		if c.next() {
			heap.Fix(&m.h, 0)
			continue
		}
		if err := c.error(); err != nil {
			m.err = err
			return false
		}
		heap.Pop(&m.h)
	}
	m.out.k = m.kbuf
	m.out.val = m.vbuf
	if m.out.tomb {
		m.out.val = nil
	}
	return true
}

// sortEntries sorts es by k and keeps, for a k given twice, the later one.
func sortEntries(es []entry) []entry {
	slices.SortStableFunc(es, func(a, b entry) int { return bytes.Compare(a.k, b.k) })
	out := es[:0]
	for i, e := range es {
		if i+1 < len(es) && bytes.Equal(es[i+1].k, e.k) {
			continue
		}
		out = append(out, e)
	}
	return out
}
