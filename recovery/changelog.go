package recovery

import (
	"encoding/binary"
	"fmt"
)

// changelog blobs list the keys one commit wrote at one epoch:
//
//	uvarint(number of steps) { uvarint(len) step }
//	{ uvarint(step index) uvarint(len) key byte(1 if tombstone) }

type loggedKey struct {
	step StepID
	key  StateKey
	tomb bool
}

func encodeChangelog(rows []Row) []byte {
	steps := map[StepID]uint64{}
	var order []StepID
	for _, r := range rows {
		if _, ok := steps[r.Step]; !ok {
			steps[r.Step] = uint64(len(order))
			order = append(order, r.Step)
		}
	}
	b := binary.AppendUvarint(nil, uint64(len(order)))
	for _, st := range order {
		b = binary.AppendUvarint(b, uint64(len(st)))
		b = append(b, st...)
	}
	for _, r := range rows {
		b = binary.AppendUvarint(b, steps[r.Step])
		b = binary.AppendUvarint(b, uint64(len(r.Key)))
		b = append(b, r.Key...)
		if r.Value == nil {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	return b
}

func decodeChangelog(b []byte, fn func(loggedKey)) error {
	bad := fmt.Errorf("%w: malformed changelog entry", ErrCorrupt)
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return bad
	}
	b = b[k:]
	steps := make([]StepID, n)
	for i := range steps {
		l, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < l {
			return bad
		}
		steps[i] = StepID(b[k : k+int(l)])
		b = b[k+int(l):]
	}
	for len(b) > 0 {
		si, k := binary.Uvarint(b)
		if k <= 0 || si >= uint64(len(steps)) {
			return bad
		}
		b = b[k:]
		l, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < l+1 {
			return bad
		}
		key := StateKey(b[k : k+int(l)])
		tomb := b[k+int(l)] == 1
		b = b[k+int(l)+1:]
		fn(loggedKey{steps[si], key, tomb})
	}
	return nil
}
