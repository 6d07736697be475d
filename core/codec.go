package core

import (
	"encoding"
	"encoding/json"
	"fmt"
)

// Codec encodes operator state for snapshots. Encode must not keep dst's
// result; Decode must not keep b.
type Codec[S any] interface {
	Encode(s *S) ([]byte, error)
	Decode(b []byte) (*S, error)
}

// appender is a Codec that can also encode into a buffer it is given:
// snapshots of many keys then share one buffer instead of allocating one
// slice per key.
type appender[S any] interface {
	Append(dst []byte, s *S) ([]byte, error)
}

// DefaultCodec uses S's MarshalBinary/UnmarshalBinary when *S implements
// them (and AppendBinary, if it does, to encode without allocating), and
// encoding/json otherwise.
func DefaultCodec[S any]() Codec[S] {
	var p any = new(S)
	if _, ok := p.(encoding.BinaryMarshaler); ok {
		if _, ok := p.(encoding.BinaryUnmarshaler); ok {
			return binaryCodec[S]{}
		}
	}
	return JSONCodec[S]{}
}

type binaryCodec[S any] struct{}

func (binaryCodec[S]) Encode(s *S) ([]byte, error) {
	return any(s).(encoding.BinaryMarshaler).MarshalBinary()
}

// Append implements appender with AppendBinary where *S has it.
func (binaryCodec[S]) Append(dst []byte, s *S) ([]byte, error) {
	if a, ok := any(s).(encoding.BinaryAppender); ok {
		return a.AppendBinary(dst)
	}
	b, err := any(s).(encoding.BinaryMarshaler).MarshalBinary()
	return append(dst, b...), err
}

// DecodeInto implements decoderInto.
func (binaryCodec[S]) DecodeInto(b []byte, s *S) error {
	return any(s).(encoding.BinaryUnmarshaler).UnmarshalBinary(b)
}

func (binaryCodec[S]) Decode(b []byte) (*S, error) {
	s := new(S)
	if err := any(s).(encoding.BinaryUnmarshaler).UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return s, nil
}

// DecodeInto decodes into s (a batch of restored states is then one
// allocation).
func (JSONCodec[S]) DecodeInto(b []byte, s *S) error {
	if err := json.Unmarshal(b, s); err != nil {
		return fmt.Errorf("decode state: %w", err)
	}
	return nil
}

// JSONCodec encodes state with encoding/json.
type JSONCodec[S any] struct{}

// Encode implements Codec.
func (JSONCodec[S]) Encode(s *S) ([]byte, error) { return json.Marshal(s) }

// Decode implements Codec.
func (JSONCodec[S]) Decode(b []byte) (*S, error) {
	s := new(S)
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("decode state: %w", err)
	}
	return s, nil
}
