package core

import (
	"encoding/binary"
	"testing"
)

// FuzzWireDecode: no batch a peer sends can crash the process; each codec
// decodes it or says it is malformed.
func FuzzWireDecode(f *testing.F) {
	for _, seed := range [][]byte{
		binary.AppendUvarint(nil, 2), {1, 3, 'a', 'b', 'c', 4}, {0xff, 0xff, 0xff, 0xff, 0x0f}, []byte(`[{"Key":"a","Value":1}]`),
	} {
		f.Add(seed)
	}
	codecs := []wireCodec{stringsWire{}, kvUnitWire{}, kvInt64Wire{}, kvStringWire{}, jsonWire[KV[float64]]{}}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, c := range codecs {
			c.decode(b)
		}
	})
}
