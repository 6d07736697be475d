package clustered

// Lookups of keys in other processes' partitions (see state.go).

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/model"
)

// ReadState implements core.StateReader: keys are read from the process
// owning their partition, each remote share in one request (a very large
// batch in a few), all at once.
func (o *OnDemand) ReadState(ctx context.Context, step core.StepID, keys []core.StateKey, fn func(int, core.Epoch, []byte) error) error {
	r, rd := o.Recovery, o.reads
	self := r.mesh.Self()
	byProc := map[int][]int32{}
	h := model.StepHash(step)
	for i, k := range keys {
		p := r.owners[model.PartitionAfter(h, k, r.count)]
		byProc[p] = append(byProc[p], int32(i))
	}
	type sent struct {
		id  uint64
		c   *call
		idx []int32
	}
	var out []sent
	defer func() {
		for _, s := range out {
			rd.retire(s.id)
		}
	}()
	for p, idx := range byProc {
		if p == self {
			continue
		}
		for len(idx) > 0 {
			n, size := 0, 0
			for n < len(idx) && n < maxKeysPerRead && size < requestBytes {
				size += len(keys[idx[n]])
				n++
			}
			id, c := rd.newCall(p)
			out = append(out, sent{id, c, idx[:n]})
			b := binary.AppendUvarint(nil, id)
			b = appendBytes(b, []byte(step))
			b = binary.AppendUvarint(b, uint64(n))
			for _, i := range idx[:n] {
				b = appendBytes(b, []byte(keys[i]))
			}
			if err := r.mesh.Send(ctx, p, "rec.read", b); err != nil {
				return fmt.Errorf("ask process %d for %d keys of %s: %w", p, n, step, err)
			}
			idx = idx[n:]
		}
	}
	if idx := byProc[self]; len(idx) > 0 {
		sub := make([]core.StateKey, len(idx))
		for j, i := range idx {
			sub[j] = keys[i]
		}
		if err := r.store.ReadState(ctx, step, sub, func(j int, e core.Epoch, v []byte) error { return fn(int(idx[j]), e, v) }); err != nil {
			return err
		}
	}
	for _, s := range out {
		for {
			flags, b, err := s.c.next(ctx, r)
			if err != nil {
				return fmt.Errorf("read %d keys of %s from process %d: %w", len(s.idx), step, s.c.from, err)
			}
			if err := decodeReadRows(b, len(s.idx), func(j int, e core.Epoch, v []byte) error { return fn(int(s.idx[j]), e, v) }); err != nil {
				return fmt.Errorf("read %d keys of %s from process %d: %w", len(s.idx), step, s.c.from, err)
			}
			if flags&flagLast != 0 {
				break
			}
		}
	}
	return nil
}

// appendReadRow adds one key a lookup found to a reply: its index among
// the request's keys, its epoch and its value.
func appendReadRow(b []byte, j int, e core.Epoch, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(j))
	b = binary.AppendUvarint(b, uint64(e))
	return appendBytes(b, v)
}

// decodeReadRows hands fn each row of a lookup reply frame of a request
// of n keys.
func decodeReadRows(b []byte, n int, fn func(int, core.Epoch, []byte) error) error {
	for len(b) > 0 {
		j, k := binary.Uvarint(b)
		if k <= 0 || j >= uint64(n) {
			return fmt.Errorf("malformed lookup reply")
		}
		b = b[k:]
		e, k := binary.Uvarint(b)
		if k <= 0 || e >= 1<<62 {
			return fmt.Errorf("malformed lookup reply")
		}
		b = b[k:]
		v, rest, ok := cutBytes(b)
		if !ok {
			return fmt.Errorf("malformed lookup reply")
		}
		b = rest
		if err := fn(int(j), core.Epoch(e), v); err != nil {
			return err
		}
	}
	return nil
}

// readRequest decodes a peer's lookup request.
func (o *OnDemand) readRequest(b []byte) (uint64, core.StepID, []core.StateKey, error) {
	bad := fmt.Errorf("malformed lookup request")
	id, k := binary.Uvarint(b)
	if k <= 0 {
		return 0, "", nil, bad
	}
	step, b, ok := cutBytes(b[k:])
	if !ok {
		return 0, "", nil, bad
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxKeysPerRead || n > uint64(len(b)-k) {
		return 0, "", nil, bad
	}
	b = b[k:]
	keys := make([]core.StateKey, n)
	h := model.StepHash(core.StepID(step))
	self := o.mesh.Self()
	for i := range keys {
		var v []byte
		if v, b, ok = cutBytes(b); !ok {
			return 0, "", nil, bad
		}
		keys[i] = core.StateKey(v)
		if pi := model.PartitionAfter(h, keys[i], o.count); o.owners[pi] != self {
			return 0, "", nil, fmt.Errorf("lookup of a key of partition %d, which process %d owns, not this one", pi, o.owners[pi])
		}
	}
	if len(b) > 0 {
		return 0, "", nil, bad
	}
	return id, core.StepID(step), keys, nil
}

// onRead serves a peer's lookup: this process reads the keys from its
// partitions and replies, off the handler.
func (o *OnDemand) onRead(from int, b []byte) error {
	rd := o.reads
	rd.mu.Lock()
	opened := rd.opened
	rd.mu.Unlock()
	if !opened {
		return fmt.Errorf("lookup before this process opened its state")
	}
	id, step, keys, err := o.readRequest(b)
	if err != nil {
		return err
	}
	rd.serve(true, func(ctx context.Context) {
		var body []byte
		err := o.store.ReadState(ctx, step, keys, func(j int, e core.Epoch, v []byte) error {
			body = appendReadRow(body, j, e, v)
			if len(body) < replyFrame {
				return nil
			}
			err := o.mesh.Send(ctx, from, "rec.reply", frame(id, 0, body))
			body = body[:0]
			return err
		})
		if err != nil {
			o.mesh.Send(ctx, from, "rec.reply", frame(id, flagLast|flagError, []byte(err.Error())))
			return
		}
		o.mesh.Send(ctx, from, "rec.reply", frame(id, flagLast, body))
	})
	return nil
}
