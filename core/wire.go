package core

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// wireCodec encodes the batches an exchange sends to another process:
// encode takes a []T, decode returns a *[]T (as exchanges carry them).
// Common item types have compact hand-written encodings; any other type
// goes through encoding/json (its exported fields cross the wire).
type wireCodec interface {
	encode(dst []byte, batch any) ([]byte, error)
	decode(b []byte) (any, error)
}

var errWire = errors.New("malformed batch from a peer")

func wireFor[T any]() wireCodec {
	switch any([]T(nil)).(type) {
	case []string:
		return stringsWire{}
	case []KV[struct{}]:
		return kvUnitWire{}
	case []KV[int64]:
		return kvInt64Wire{}
	case []KV[string]:
		return kvStringWire{}
	}
	return jsonWire[T]{}
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func readStr(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return "", nil, errWire
	}
	return string(b[k : k+int(n)]), b[k+int(n):], nil
}

// strReader decodes strings as slices of one string holding the whole
// payload: one allocation per batch instead of one per item. (Keyed steps
// copy a key they keep, so the payload is not retained by state.)
type strReader struct {
	all string
	off int
}

func newStrReader(b []byte) *strReader { return &strReader{all: string(b)} }

func (r *strReader) uvarint() (uint64, error) {
	var x uint64
	var s uint
	for i := 0; i < 10; i++ {
		if r.off >= len(r.all) {
			return 0, errWire
		}
		c := r.all[r.off]
		r.off++
		if c < 0x80 {
			return x | uint64(c)<<s, nil
		}
		x |= uint64(c&0x7f) << s
		s += 7
	}
	return 0, errWire
}

func (r *strReader) str() (string, error) {
	n, err := r.uvarint()
	if err != nil || n > uint64(len(r.all)-r.off) {
		return "", errWire
	}
	s := r.all[r.off : r.off+int(n)]
	r.off += int(n)
	return s, nil
}

func readCount(b []byte) (int, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return 0, nil, errWire
	}
	return int(n), b[k:], nil
}

type stringsWire struct{}

func (stringsWire) encode(dst []byte, batch any) ([]byte, error) {
	items := batch.([]string)
	dst = binary.AppendUvarint(dst, uint64(len(items)))
	for _, s := range items {
		dst = appendStr(dst, s)
	}
	return dst, nil
}

func (stringsWire) decode(b []byte) (any, error) {
	r := newStrReader(b)
	n, err := r.uvarint()
	if err != nil || n > uint64(len(b)) {
		return nil, errWire
	}
	out := make([]string, n)
	for i := range out {
		if out[i], err = r.str(); err != nil {
			return nil, err
		}
	}
	return &out, nil
}

type kvUnitWire struct{}

func (kvUnitWire) encode(dst []byte, batch any) ([]byte, error) {
	items := batch.([]KV[struct{}])
	dst = binary.AppendUvarint(dst, uint64(len(items)))
	for _, it := range items {
		dst = appendStr(dst, it.Key)
	}
	return dst, nil
}

func (kvUnitWire) decode(b []byte) (any, error) {
	r := newStrReader(b)
	n, err := r.uvarint()
	if err != nil || n > uint64(len(b)) {
		return nil, errWire
	}
	out := make([]KV[struct{}], n)
	for i := range out {
		if out[i].Key, err = r.str(); err != nil {
			return nil, err
		}
	}
	return &out, nil
}

type kvInt64Wire struct{}

func (kvInt64Wire) encode(dst []byte, batch any) ([]byte, error) {
	items := batch.([]KV[int64])
	dst = binary.AppendUvarint(dst, uint64(len(items)))
	for _, it := range items {
		dst = appendStr(dst, it.Key)
		dst = binary.AppendVarint(dst, it.Value)
	}
	return dst, nil
}

func (kvInt64Wire) decode(b []byte) (any, error) {
	n, b, err := readCount(b)
	if err != nil {
		return nil, err
	}
	out := make([]KV[int64], n)
	for i := range out {
		if out[i].Key, b, err = readStr(b); err != nil {
			return nil, err
		}
		v, k := binary.Varint(b)
		if k <= 0 {
			return nil, errWire
		}
		out[i].Value, b = v, b[k:]
	}
	return &out, nil
}

type kvStringWire struct{}

func (kvStringWire) encode(dst []byte, batch any) ([]byte, error) {
	items := batch.([]KV[string])
	dst = binary.AppendUvarint(dst, uint64(len(items)))
	for _, it := range items {
		dst = appendStr(appendStr(dst, it.Key), it.Value)
	}
	return dst, nil
}

func (kvStringWire) decode(b []byte) (any, error) {
	n, b, err := readCount(b)
	if err != nil {
		return nil, err
	}
	out := make([]KV[string], n)
	for i := range out {
		if out[i].Key, b, err = readStr(b); err != nil {
			return nil, err
		}
		if out[i].Value, b, err = readStr(b); err != nil {
			return nil, err
		}
	}
	return &out, nil
}

type jsonWire[T any] struct{}

func (jsonWire[T]) encode(dst []byte, batch any) ([]byte, error) {
	b, err := json.Marshal(batch.([]T))
	if err != nil {
		return nil, fmt.Errorf("encode items for another process: %w", err)
	}
	return append(dst, b...), nil
}

func (jsonWire[T]) decode(b []byte) (any, error) {
	var out []T
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%w: %v", errWire, err)
	}
	return &out, nil
}
