package recovery

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
)

// A liveRow is one segment row held in memory so that keys can be read on
// demand without scanning segments (see OpenState): the row's entries as
// they are stored, where each entry starts, and a one-word-per-key bloom
// filter. A lookup asks the filter, then binary-searches the offsets. It
// costs the row's bytes plus about 5.3 bytes per entry.
type liveRow struct {
	seq   int64
	epoch Epoch
	data  []byte   // the entries (the blob without its header)
	offs  []uint32 // where each entry starts in data
	bloom []uint64
}

// bloomSeed keys the filters: they live in this process only.
var bloomSeed = maphash.MakeSeed()

// bloomBitsPerKey sizes a row's filter (about 2% false positives).
const bloomBitsPerKey = 10

func bloomWords(n int) int { return max(1, (n*bloomBitsPerKey+63)/64) }

// bloomPos is the word and the bits a key sets in a filter of n words.
func bloomPos(h uint64, n int) (int, uint64) {
	w := int(uint64(uint32(h>>32)) * uint64(n) >> 32)
	return w, 1<<(h&63) | 1<<(h>>6&63) | 1<<(h>>12&63)
}

func keyHash(k []byte) uint64 { return maphash.Bytes(bloomSeed, k) }

// newLiveRow indexes a segment blob, which it keeps (the caller must not
// reuse it).
func newLiveRow(seq int64, e Epoch, blob []byte) (*liveRow, error) {
	if len(blob) < 2 || blob[0] != segmentFormat {
		return nil, fmt.Errorf("%w: segment of epoch %d: unknown format", ErrCorrupt, e)
	}
	n, k := binary.Uvarint(blob[1:])
	if k <= 0 || n > uint64(len(blob)) {
		return nil, fmt.Errorf("%w: segment of epoch %d: bad entry count", ErrCorrupt, e)
	}
	r := &liveRow{seq: seq, epoch: e, data: blob[1+k:]}
	r.offs = make([]uint32, 0, n)
	r.bloom = make([]uint64, bloomWords(int(n)))
	bad := fmt.Errorf("%w: segment of epoch %d: malformed entry", ErrCorrupt, e)
	var prev []byte
	for pos := 0; pos < len(r.data); {
		if uint64(len(r.offs)) == n || pos > 1<<32-1 {
			return nil, bad
		}
		r.offs = append(r.offs, uint32(pos))
		key, next, ok := r.parse(pos)
		if !ok || (prev != nil && bytes.Compare(prev, key) >= 0) {
			return nil, bad
		}
		prev = key
		w, bits := bloomPos(keyHash(key), len(r.bloom))
		r.bloom[w] |= bits
		pos = next
	}
	if uint64(len(r.offs)) != n {
		return nil, bad
	}
	return r, nil
}

// parse reads the entry at pos: its key and where the next entry starts.
func (r *liveRow) parse(pos int) (k []byte, next int, ok bool) {
	b := r.data[pos:]
	l, n := binary.Uvarint(b)
	if n <= 0 || uint64(len(b)-n) < l+1 {
		return nil, 0, false
	}
	k = b[n : n+int(l)]
	rest := b[n+int(l):]
	switch rest[0] {
	case 1:
		return k, pos + n + int(l) + 1, true
	case 0:
		vl, m := binary.Uvarint(rest[1:])
		if m <= 0 || uint64(len(rest)-1-m) < vl {
			return nil, 0, false
		}
		return k, pos + n + int(l) + 1 + m + int(vl), true
	}
	return nil, 0, false
}

// at returns entry i (valid: the row was checked when it was indexed).
func (r *liveRow) at(i int) entry {
	b := r.data[r.offs[i]:]
	l, n := binary.Uvarint(b)
	e := entry{k: b[n : n+int(l) : n+int(l)], epoch: r.epoch}
	rest := b[n+int(l):]
	if rest[0] == 1 {
		e.tomb = true
		return e
	}
	vl, m := binary.Uvarint(rest[1:])
	e.val = rest[1+m : 1+m+int(vl) : 1+m+int(vl)]
	return e
}

func (r *liveRow) key(i int) []byte {
	b := r.data[r.offs[i]:]
	l, n := binary.Uvarint(b)
	return b[n : n+int(l)]
}

// search returns the index of the first entry whose key is not below k.
func (r *liveRow) search(k []byte) int {
	i, _ := slices.BinarySearchFunc(r.offs, k, func(off uint32, k []byte) int {
		b := r.data[off:]
		l, n := binary.Uvarint(b)
		return bytes.Compare(b[n:n+int(l)], k)
	})
	return i
}

// find looks k (hash h) up in the row.
func (r *liveRow) find(k []byte, h uint64) (entry, bool) {
	w, bits := bloomPos(h, len(r.bloom))
	if r.bloom[w]&bits != bits {
		return entry{}, false
	}
	i := r.search(k)
	if i == len(r.offs) || !bytes.Equal(r.key(i), k) {
		return entry{}, false
	}
	return r.at(i), true
}

// span returns the indexes [i, j) of the entries whose keys start with
// prefix (a step's partition-key prefix).
func (r *liveRow) span(lo, hi []byte) (int, int) {
	return r.search(lo), r.search(hi)
}

func (r *liveRow) size() int64 {
	return int64(cap(r.data)) + 4*int64(cap(r.offs)) + 8*int64(cap(r.bloom)) + 96
}

// liveCursor walks entries [i, j) of a row (a cursor for merges).
type liveCursor struct {
	r    *liveRow
	i, j int
	cur  entry
}

func (c *liveCursor) next() bool {
	if c.i >= c.j {
		return false
	}
	c.cur = c.r.at(c.i)
	c.i++
	return true
}

func (c *liveCursor) entry() *entry { return &c.cur }
func (c *liveCursor) error() error  { return nil }

// liveIndex is one partition's live rows, in (epoch, seq) order. The list
// is replaced, never changed, so a reader works on the list it took.
type liveIndex struct {
	mu    sync.Mutex
	rows  atomic.Pointer[[]*liveRow]
	bytes atomic.Int64
}

func (x *liveIndex) list() []*liveRow {
	if p := x.rows.Load(); p != nil {
		return *p
	}
	return nil
}

func rowLess(a, b *liveRow) int {
	if a.epoch != b.epoch {
		return cmpEpoch(a.epoch, b.epoch)
	}
	switch {
	case a.seq < b.seq:
		return -1
	case a.seq > b.seq:
		return 1
	}
	return 0
}

// mergeAt is how many rows of one epoch the index holds before it merges
// them into one. A lookup asks every row's filter, newest first, and a
// run that writes keys early (a bound on state memory) commits many small
// segments per epoch: hundreds of rows per partition without merging.
const mergeAt = 8

// add adds rows (new ones, of any epoch). An epoch left with more than
// mergeAt rows has them merged into one (the same entries, each key's
// newest), so a lookup asks a handful of filters, not one per commit.
func (x *liveIndex) add(rs []*liveRow) {
	if len(rs) == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	old := x.list()
	next := make([]*liveRow, 0, len(old)+len(rs))
	next = append(append(next, old...), rs...)
	slices.SortFunc(next, rowLess)
	var n int64
	for _, r := range rs {
		n += r.size()
	}
	// Rows of one epoch are adjacent (rowLess).
	for i := 0; i < len(next); {
		j := i + 1
		for j < len(next) && next[j].epoch == next[i].epoch {
			j++
		}
		if j-i > mergeAt {
			// Merge the newest rows, and older ones while they are not
			// much larger than what is merged so far: rows grow in size
			// tiers, so a row is rewritten a few times, not once per merge.
			k, acc := j-mergeAt/2, int64(0)
			for _, r := range next[k:j] {
				acc += r.size()
			}
			for k > i && next[k-1].size() <= 2*acc {
				k--
				acc += next[k].size()
			}
			m := mergeRows(next[k:j])
			n += m.size() - acc
			next = slices.Replace(next, k, j, m)
			j = k + 1
		}
		i = j
	}
	x.rows.Store(&next)
	x.bytes.Add(n)
}

// mergeRows merges rows of one epoch, oldest first, into one row holding
// each key's entry from the newest row that has it (its seq is the
// newest's, so rows added later still order after it). The rows are left
// as they are: readers may hold them.
func mergeRows(rs []*liveRow) *liveRow {
	total, entries := 0, 0
	cs := make([]cursor, len(rs))
	for i, r := range rs {
		total += len(r.data)
		entries += len(r.offs)
		cs[i] = &liveCursor{r: r, j: len(r.offs)}
	}
	m := &liveRow{seq: rs[len(rs)-1].seq, epoch: rs[0].epoch, data: make([]byte, 0, total), offs: make([]uint32, 0, entries)}
	// Of equal keys of one epoch the merger yields the later cursor's.
	for mg := newMerger(cs); mg.next(); {
		e := &mg.out
		m.offs = append(m.offs, uint32(len(m.data)))
		m.data = binary.AppendUvarint(m.data, uint64(len(e.k)))
		m.data = append(m.data, e.k...)
		if e.tomb {
			m.data = append(m.data, 1)
			continue
		}
		m.data = append(m.data, 0)
		m.data = binary.AppendUvarint(m.data, uint64(len(e.val)))
		m.data = append(m.data, e.val...)
	}
	m.bloom = make([]uint64, bloomWords(len(m.offs)))
	for i := range m.offs {
		w, bits := bloomPos(keyHash(m.key(i)), len(m.bloom))
		m.bloom[w] |= bits
	}
	return m
}

// dropBelow drops the rows of epochs below e (compaction moved them into
// the base).
func (x *liveIndex) dropBelow(e Epoch) {
	x.mu.Lock()
	defer x.mu.Unlock()
	old := x.list()
	next := make([]*liveRow, 0, len(old))
	var n int64
	for _, r := range old {
		if r.epoch >= e {
			next = append(next, r)
		} else {
			n += r.size()
		}
	}
	x.rows.Store(&next)
	x.bytes.Add(-n)
}

// newest finds k's newest entry in rows (newest epoch first; of one epoch,
// the later row).
func newest(rows []*liveRow, k []byte) (entry, bool) {
	h := keyHash(k)
	for i := len(rows) - 1; i >= 0; i-- {
		if e, ok := rows[i].find(k, h); ok {
			return e, true
		}
	}
	return entry{}, false
}

// readLiveRows reads segments (seq, epoch, data, in that order of columns)
// that query selects, as live rows.
func readLiveRows(ctx context.Context, q queryer, query string, args ...any) ([]*liveRow, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*liveRow
	for rows.Next() {
		var seq int64
		var e Epoch
		var data []byte
		if err := rows.Scan(&seq, &e, &data); err != nil {
			return nil, err
		}
		r, err := newLiveRow(seq, e, data)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
