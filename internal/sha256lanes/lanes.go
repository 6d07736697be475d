// Package sha256lanes hashes one byte stream into several SHA-256 (or
// HMAC-SHA256) digests at once, each over a stretch of it that starts
// where its lane was started: a whole file, the chunk being cut from it,
// and the frame being cut from that chunk. Each 64-byte block is read and
// its message schedule computed once, and the rounds are run for every
// lane side by side; on x86-64 with the SHA extensions that costs about
// half as much as hashing the block once per lane (the rounds of one
// digest wait on each other; those of three do not). Elsewhere each lane
// is hashed by crypto/sha256 in turn.
//
// The digests are those of crypto/sha256 and crypto/hmac: Hasher only
// changes how fast they are computed.
package sha256lanes

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"fmt"
)

// Lanes is how many digests a Hasher keeps.
const Lanes = 3

const blockSize = 64

// iv is SHA-256's initial state.
var iv = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

// Hasher computes Lanes digests of what is written to it, each over what
// was written since its lane was last started. A lane may only be started
// at a block boundary: when the bytes written so far are a multiple of 64.
// The zero Hasher has every lane started (plain SHA-256) at offset 0.
// A Hasher is not safe for concurrent use.
type Hasher struct {
	h    [Lanes][8]uint32
	n    [Lanes]uint64           // bytes hashed into each lane (an HMAC's key block included)
	opad [Lanes]*[blockSize]byte // an HMAC lane's outer key block; nil for plain SHA-256
	buf  [blockSize]byte
	nbuf int
	init bool
}

func (h *Hasher) lazyInit() {
	if !h.init {
		for i := range h.h {
			h.h[i], h.n[i], h.opad[i] = iv, 0, nil
		}
		h.init = true
	}
}

// Start restarts lane i: its digest will cover what is written from now
// on, as SHA-256, or with a non-nil key as HMAC-SHA256 under key. It
// panics unless the bytes written so far are a multiple of 64.
func (h *Hasher) Start(i int, key []byte) {
	h.lazyInit()
	if h.nbuf != 0 {
		panic(fmt.Sprintf("sha256lanes: lane %d started %d bytes into a block", i, h.nbuf))
	}
	h.h[i], h.n[i], h.opad[i] = iv, 0, nil
	if key == nil {
		return
	}
	if len(key) > blockSize {
		s := sha256.Sum256(key)
		key = s[:]
	}
	var ipad [blockSize]byte
	opad := new([blockSize]byte)
	copy(ipad[:], key)
	copy(opad[:], key)
	for j := range ipad {
		ipad[j] ^= 0x36
		opad[j] ^= 0x5c
	}
	h.h[i], h.n[i], h.opad[i] = advance(iv, ipad[:]), blockSize, opad
}

// Write hashes p into every lane. It never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	h.lazyInit()
	n := len(p)
	for i := range h.n {
		h.n[i] += uint64(n)
	}
	if h.nbuf > 0 {
		k := copy(h.buf[h.nbuf:], p)
		h.nbuf += k
		p = p[k:]
		if h.nbuf < blockSize {
			return n, nil
		}
		blocks(&h.h, h.buf[:])
		h.nbuf = 0
	}
	if whole := len(p) &^ (blockSize - 1); whole > 0 {
		blocks(&h.h, p[:whole])
		p = p[whole:]
	}
	h.nbuf = copy(h.buf[:], p)
	return n, nil
}

// Sum appends lane i's digest of what was written since it was started
// to b. It does not change the Hasher.
func (h *Hasher) Sum(i int, b []byte) []byte {
	h.lazyInit()
	d := resume(h.h[i], h.n[i], h.buf[:h.nbuf])
	if h.opad[i] == nil {
		return d.Sum(b)
	}
	inner := d.Sum(nil)
	outer := sha256.New()
	outer.Write(h.opad[i][:])
	outer.Write(inner)
	return outer.Sum(b)
}

// resume returns a crypto/sha256 hash in the state st after n bytes, the
// last n%64 of them tail (through its binary form: magic, state, partial
// block, length).
func resume(st [8]uint32, n uint64, tail []byte) encodingHash {
	m := make([]byte, 0, 4+32+blockSize+8)
	m = append(m, "sha\x03"...)
	for _, v := range st {
		m = binary.BigEndian.AppendUint32(m, v)
	}
	m = append(m, tail...)
	m = append(m, make([]byte, blockSize-len(tail))...)
	m = binary.BigEndian.AppendUint64(m, n)
	d := sha256.New().(encodingHash)
	if err := d.UnmarshalBinary(m); err != nil {
		panic("sha256lanes: crypto/sha256 refused its own state: " + err.Error())
	}
	return d
}

type encodingHash interface {
	encoding.BinaryMarshaler
	encoding.BinaryUnmarshaler
	Write([]byte) (int, error)
	Sum([]byte) []byte
}

// blocksGeneric hashes p's whole blocks into each state in turn, with
// crypto/sha256.
func blocksGeneric(dig *[Lanes][8]uint32, p []byte) {
	p = p[:len(p)&^(blockSize-1)]
	for i := range dig {
		dig[i] = advance(dig[i], p)
	}
}

// advance returns state st after the whole blocks p (a multiple of 64
// bytes), hashed by crypto/sha256.
func advance(st [8]uint32, p []byte) [8]uint32 {
	d := resume(st, 0, nil)
	d.Write(p)
	m, err := d.MarshalBinary()
	if err != nil {
		panic("sha256lanes: crypto/sha256 cannot give its state: " + err.Error())
	}
	for j := range st {
		st[j] = binary.BigEndian.Uint32(m[4+4*j:])
	}
	return st
}
