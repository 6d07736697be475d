package recovery

import (
	"bytes"
	"container/heap"
	"context"
	"database/sql"
	"encoding/binary"
	"slices"
	"sync"
)

// batch is one commit's changes for one partition, encoded when Commit is
// called (on the caller's goroutine, so the caller's rows are free as soon
// as it returns): the partition keys and values in two buffers, and a
// reference per change. The partition's writer sorts the references and
// writes them as segments.
type batch struct {
	keys, vals []byte
	refs       []bref
	epochs     []Epoch // the epochs refs name, by index
}

// bref is one change of a batch (32 bytes): its partition key and value in
// the batch's buffers (vlen < 0: a tombstone), the key's first 8 bytes
// big-endian (so most comparisons never touch the buffer), its order of
// arrival (a later change of a key in one epoch wins), and its epoch's
// index in the batch's epochs.
type bref struct {
	prefix     uint64
	koff, klen int32
	voff, vlen int32
	seq        int32
	ep         uint16
}

func (b *batch) epoch(r bref) Epoch { return b.epochs[r.ep] }

// batches are reused: a busy flow encodes a batch per partition per epoch.
var batches sync.Pool

func getBatch(rows int) *batch {
	if b, ok := batches.Get().(*batch); ok {
		return b
	}
	return &batch{keys: make([]byte, 0, rows*16), vals: make([]byte, 0, rows*8), refs: make([]bref, 0, rows)}
}

// putBatch gives a written batch back for reuse.
func putBatch(b *batch) {
	if b == nil || cap(b.refs) > 1<<22 {
		return // an exceptional epoch need not pin its memory
	}
	b.keys, b.vals, b.refs, b.epochs = b.keys[:0], b.vals[:0], b.refs[:0], b.epochs[:0]
	batches.Put(b)
}

func (b *batch) add(num uint64, key StateKey, e Epoch, val []byte) {
	koff := len(b.keys)
	b.keys = appendKey(b.keys, num, key)
	r := bref{prefix: prefix8(b.keys[koff:]), ep: b.epochIndex(e), koff: int32(koff), klen: int32(len(b.keys) - koff), seq: int32(len(b.refs)), vlen: -1}
	if val != nil {
		r.voff, r.vlen = int32(len(b.vals)), int32(len(val))
		b.vals = append(b.vals, val...)
	}
	b.refs = append(b.refs, r)
}

func (b *batch) key(r bref) []byte { return b.keys[r.koff : r.koff+r.klen] }

// epochIndex returns e's index in b.epochs, adding it.
func (b *batch) epochIndex(e Epoch) uint16 {
	for i := len(b.epochs) - 1; i >= 0; i-- {
		if b.epochs[i] == e {
			return uint16(i)
		}
	}
	b.epochs = append(b.epochs, e)
	return uint16(len(b.epochs) - 1)
}

// bytes is what the batch holds in memory.
func (b *batch) bytes() int64 {
	return int64(cap(b.keys) + cap(b.vals) + cap(b.refs)*48)
}

func (b *batch) cmp(x, y bref) int {
	if x.prefix != y.prefix {
		if x.prefix < y.prefix {
			return -1
		}
		return 1
	}
	if c := bytes.Compare(b.key(x), b.key(y)); c != 0 {
		return c
	}
	return int(x.seq - y.seq)
}

// writeSegments writes the batches of a group of commits as one segment
// per epoch (several, with disjoint keys, past segmentSplit bytes): each
// batch's changes of the epoch sorted by key, then merged across batches
// (so no batch is copied into another); of a key changed twice in one
// epoch, the later change wins.
//
// onRow, if set, is told each row written (its blob is only valid during
// the call).
func writeSegments(ctx context.Context, tx *sql.Tx, bs []*batch, blob []byte, sc *sortScratch, onRow func(seq int64, e Epoch, blob []byte)) ([]byte, error) {
	type run struct {
		b    *batch
		refs []bref
	}
	byEpoch := map[Epoch][]run{}
	for _, b := range bs {
		refs := b.refs
		if len(b.epochs) > 1 {
			slices.SortStableFunc(refs, func(x, y bref) int { return cmpEpoch(b.epoch(x), b.epoch(y)) })
		}
		for start := 0; start < len(refs); {
			end := start
			for end < len(refs) && refs[end].ep == refs[start].ep {
				end++
			}
			part := refs[start:end]
			b.sortRefs(part, sc)
			e := b.epoch(part[0])
			byEpoch[e] = append(byEpoch[e], run{b, part})
			start = end
		}
	}
	epochs := make([]Epoch, 0, len(byEpoch))
	for e := range byEpoch {
		epochs = append(epochs, e)
	}
	slices.Sort(epochs)
	for _, e := range epochs {
		runs := byEpoch[e]
		// The entries are encoded after room for the header, which goes
		// right before them once their number is known: a segment is built
		// once, in one buffer, and a long one is cut at a key into
		// segments of about segmentSplit bytes, so that neither this
		// buffer nor SQLite's copies of it grow with the epoch.
		body := append(blob[:0], make([]byte, headRoom)...)
		entries := 0
		write := func() error {
			if entries == 0 {
				return nil
			}
			head := binary.AppendUvarint([]byte{segmentFormat}, uint64(entries))
			seg := body[headRoom-len(head):]
			copy(seg, head)
			res, err := tx.ExecContext(ctx, `INSERT INTO segments (epoch, entries, data) VALUES (?, ?, ?)`, int64(e), entries, seg)
			if err != nil {
				return err
			}
			if onRow != nil {
				seq, err := res.LastInsertId()
				if err != nil {
					return err
				}
				onRow(seq, e, seg)
			}
			body, entries = body[:headRoom], 0
			return nil
		}
		emit := func(b *batch, r bref) error {
			k := b.key(r)
			body = binary.AppendUvarint(body, uint64(len(k)))
			body = append(body, k...)
			entries++
			if r.vlen < 0 {
				body = append(body, 1)
			} else {
				body = append(body, 0)
				body = binary.AppendUvarint(body, uint64(r.vlen))
				body = append(body, b.vals[r.voff:r.voff+r.vlen]...)
			}
			if len(body) >= segmentSplit {
				return write()
			}
			return nil
		}
		// A heap of the runs by their next change's key (a later run first
		// on a tie); within a run a key's last change is kept, and between
		// runs the later run's (a later commit's) change of a key wins.
		h := make(runHeap, 0, len(runs))
		for i := range runs {
			if len(runs[i].refs) > 0 {
				h = append(h, &runCursor{b: runs[i].b, refs: runs[i].refs, ord: i})
			}
		}
		heap.Init(&h)
		var last []byte
		have := false
		for len(h) > 0 {
			c := h[0]
			r := c.refs[c.pos]
			k := c.b.key(r)
			// The heap yields a key's changes later run first: keep the
			// first, skip the rest.
			if !have || !bytes.Equal(k, last) {
				// Within the run, skip to the key's last change.
				for c.pos+1 < len(c.refs) && bytes.Equal(c.b.key(c.refs[c.pos+1]), k) {
					c.pos++
				}
				if err := emit(c.b, c.refs[c.pos]); err != nil {
					return body, err
				}
				last, have = k, true
			}
			c.pos++
			if c.pos == len(c.refs) {
				heap.Pop(&h)
			} else {
				heap.Fix(&h, 0)
			}
		}
		if err := write(); err != nil {
			return body, err
		}
		blob = body
	}
	return blob, nil
}

// segmentSplit is the size at which writeSegments ends a segment and
// starts the next, at a key boundary (segments of one epoch with disjoint
// keys hold the same changes as one).
const segmentSplit = 1 << 20

// headRoom is the most a segment's header takes: the format byte and the
// number of entries.
const headRoom = 1 + binary.MaxVarintLen64

// runCursor walks one sorted run of a batch's changes.
type runCursor struct {
	b    *batch
	refs []bref
	pos  int
	ord  int
}

type runHeap []*runCursor

func (h runHeap) Len() int { return len(h) }
func (h runHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	ra, rb := a.refs[a.pos], b.refs[b.pos]
	if ra.prefix != rb.prefix {
		return ra.prefix < rb.prefix
	}
	if c := bytes.Compare(a.b.key(ra), b.b.key(rb)); c != 0 {
		return c < 0
	}
	return a.ord > b.ord // the later run first
}
func (h runHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *runHeap) Push(x any)   { *h = append(*h, x.(*runCursor)) }
func (h *runHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// sharedSteps is a partition's step table, shared by the goroutines that
// encode commits (they number new steps) and the partition's writer (it
// stores the numbers given since its last transaction).
type sharedSteps struct {
	mu        sync.Mutex
	t         *stepTable
	persisted int // numbers below this are in the steps table
}

func (s *sharedSteps) num(id StepID) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.t.num(id); ok {
		return n
	}
	n := uint64(len(s.t.byNum))
	if n == 0 {
		n = 1
	}
	s.t.set(n, id)
	return n
}

// lookup returns id's number, if it has one.
func (s *sharedSteps) lookup(id StepID) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t.num(id)
}

// persist stores the step numbers given since the last call, in tx; the
// caller calls done after tx commits.
func (s *sharedSteps) persist(ctx context.Context, tx *sql.Tx) (done func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	upto := len(s.t.byNum)
	for n := max(s.persisted, 1); n < upto; n++ {
		if _, err := tx.ExecContext(ctx, `INSERT INTO steps (num, step_id) VALUES (?, ?)`, n, string(s.t.byNum[n])); err != nil {
			return nil, err
		}
	}
	return func() {
		s.mu.Lock()
		s.persisted = max(s.persisted, upto)
		s.mu.Unlock()
	}, nil
}

func cmpEpoch(a, b Epoch) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// prefix8 is k's first 8 bytes as a big-endian number (zero-padded).
func prefix8(k []byte) uint64 {
	var b [8]byte
	copy(b[:], k)
	return binary.BigEndian.Uint64(b[:])
}

// sortScratch is the memory sortRefs works in. A partition's writer keeps
// one, so that sorting every epoch's changes allocates nothing once it has
// grown: allocated per sort it was the largest allocation of a run with
// recovery (about 350 MB over 2M lines of 1M distinct words), and garbage
// made at that rate raised the run's peak heap by more than the live
// buffers did.
type sortScratch struct {
	tmp   []bref
	keys  [][]uint64 // per depth: each ref's 8-byte chunk of its key
	tk    []uint64
	count []int32
}

// sized returns s with length n, reusing its memory when it is enough.
func sized[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// sortRefs sorts refs by key, then by arrival, without comparing through a
// function: a stable LSD radix sort of each 8-byte chunk of the keys (most
// keys differ in their first 8 bytes, which every ref carries inline), then
// the same for the next chunk within runs of keys that tie so far. sc may
// be nil.
func (b *batch) sortRefs(refs []bref, sc *sortScratch) {
	if sc == nil {
		sc = &sortScratch{}
	}
	sc.tmp = sized(sc.tmp, len(refs))
	b.sortDepth(refs, sc.tmp, 0, sc)
}

func (b *batch) sortDepth(refs, tmp []bref, depth int, sc *sortScratch) {
	if len(refs) < 2 {
		return
	}
	if len(refs) <= 32 {
		slices.SortStableFunc(refs, b.cmp)
		return
	}
	chunk := func(r *bref) uint64 {
		if depth == 0 {
			return r.prefix
		}
		k := b.key(*r)
		if len(k) <= depth*8 {
			return 0
		}
		return prefix8(k[depth*8:])
	}
	for len(sc.keys) <= depth {
		sc.keys = append(sc.keys, nil)
	}
	sc.keys[depth] = sized(sc.keys[depth], len(refs))
	keys := sc.keys[depth]
	for i := range refs {
		keys[i] = chunk(&refs[i])
	}
	radixSort64(refs, keys, tmp, sc)
	// Runs of equal chunks: keys that end within this chunk come first,
	// shorter first; the rest go on to the next chunk.
	end := (depth + 1) * 8
	for i := 0; i < len(refs); {
		j := i + 1
		for j < len(refs) && keys[j] == keys[i] {
			j++
		}
		if j-i > 1 {
			run := refs[i:j]
			slices.SortStableFunc(run, func(x, y bref) int {
				xe, ye := int(x.klen) <= end, int(y.klen) <= end
				switch {
				case xe && ye:
					return int(x.klen - y.klen)
				case xe:
					return -1
				case ye:
					return 1
				}
				return 0
			})
			k := 0
			for k < len(run) && int(run[k].klen) <= end {
				k++
			}
			b.sortDepth(run[k:], tmp[i+k:j], depth+1, sc)
		}
		i = j
	}
}

// radixSort64 sorts refs by keys (stable), moving keys along: 8-bit
// digits (16-bit for large sorts, where the fewer passes pay for the
// larger count table), skipping digits every key shares.
func radixSort64(refs []bref, keys []uint64, tmp []bref, sc *sortScratch) {
	bits := uint(8)
	if len(refs) >= 1<<17 {
		bits = 16
	}
	mask := uint64(1)<<bits - 1
	sc.tk = sized(sc.tk, len(keys))
	sc.count = sized(sc.count, 1<<bits)
	tk, count := sc.tk, sc.count
	src, dst := refs, tmp[:len(refs)]
	sk, dk := keys, tk
	for shift := uint(0); shift < 64; shift += bits {
		clear(count)
		for _, k := range sk {
			count[k>>shift&mask]++
		}
		if int(count[sk[0]>>shift&mask]) == len(sk) {
			continue // every key has this digit: nothing to move
		}
		var pos int32
		for i, c := range count {
			count[i] = pos
			pos += c
		}
		for i, k := range sk {
			d := k >> shift & mask
			dst[count[d]] = src[i]
			dk[count[d]] = k
			count[d]++
		}
		src, dst = dst, src
		sk, dk = dk, sk
	}
	if &src[0] != &refs[0] {
		copy(refs, src)
		copy(keys, sk)
	}
}
