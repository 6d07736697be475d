package sha256lanes

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

// want is lane i's digest computed by crypto/sha256 or crypto/hmac over
// data[start:].
func want(data []byte, start int, key []byte) []byte {
	if key == nil {
		s := sha256.Sum256(data[start:])
		return s[:]
	}
	m := hmac.New(sha256.New, key)
	m.Write(data[start:])
	return m.Sum(nil)
}

// check writes data to a Hasher in pieces cut at random, starting lane i
// at starts[i] (a multiple of 64) with keys[i], and compares every lane's
// Sum with crypto/sha256's and crypto/hmac's, at the end and at each
// start.
func check(t *testing.T, r *rand.Rand, data []byte, starts [Lanes]int, keys [Lanes][]byte) {
	t.Helper()
	var h Hasher
	started := [Lanes]bool{}
	off := 0
	for off <= len(data) {
		for i, s := range starts {
			if s == off && !started[i] {
				h.Start(i, keys[i])
				started[i] = true
			}
		}
		if off == len(data) {
			break
		}
		next := len(data)
		for _, s := range starts {
			if s > off && s < next {
				next = s
			}
		}
		n := 1 + r.IntN(next-off)
		if r.IntN(3) == 0 {
			n = min(next-off, 1+r.IntN(70))
		}
		h.Write(data[off : off+n])
		off += n
		for i := range starts {
			if started[i] && r.IntN(8) == 0 {
				if got, w := h.Sum(i, nil), want(data[:off], starts[i], keys[i]); !bytes.Equal(got, w) {
					t.Fatalf("lane %d (from %d, key %v) after %d bytes: %x, want %x", i, starts[i], keys[i] != nil, off, got, w)
				}
			}
		}
	}
	for i := range starts {
		if got, w := h.Sum(i, []byte("x")), append([]byte("x"), want(data, starts[i], keys[i])...); !bytes.Equal(got, w) {
			t.Fatalf("lane %d (from %d, key %v): %x, want %x", i, starts[i], keys[i] != nil, got, w)
		}
	}
}

func eachImpl(t *testing.T, f func(t *testing.T)) {
	t.Run("generic", func(t *testing.T) {
		defer setSHANI(setSHANI(false))
		f(t)
	})
	if useSHANI {
		t.Run("SHA-NI", f)
	} else {
		t.Log("this CPU has no SHA extensions: the generic code only")
	}
}

func TestLanesMatchCryptoSHA256AndHMAC(t *testing.T) {
	eachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		longKey := bytes.Repeat([]byte("k"), 100)
		for _, size := range []int{0, 1, 63, 64, 65, 127, 128, 1000, 4096, 64 << 10, 1<<20 + 77} {
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			blocks := size / 64
			for round := 0; round < 6; round++ {
				var starts [Lanes]int
				var keys [Lanes][]byte
				for i := range starts {
					if i > 0 && blocks > 0 {
						starts[i] = 64 * r.IntN(blocks+1)
					}
					switch r.IntN(3) {
					case 1:
						keys[i] = []byte("a chunk key of 32 bytes.........")
					case 2:
						keys[i] = longKey
					}
				}
				check(t, r, data, starts, keys)
			}
		}
	})
}

func TestStartMidBlockPanics(t *testing.T) {
	var h Hasher
	h.Write([]byte("abc"))
	defer func() {
		if recover() == nil {
			t.Fatal("Start 3 bytes into a block did not panic")
		}
	}()
	h.Start(1, nil)
}

func FuzzLanes(f *testing.F) {
	f.Add([]byte("hello"), uint16(0), uint16(1), uint64(7))
	f.Fuzz(func(t *testing.T, data []byte, s1, s2 uint16, seed uint64) {
		blocks := len(data) / 64
		starts := [Lanes]int{0, 64 * (int(s1) % (blocks + 1)), 64 * (int(s2) % (blocks + 1))}
		check(t, rand.New(rand.NewPCG(seed, 0)), data, starts, [Lanes][]byte{nil, []byte("key"), nil})
	})
}

func BenchmarkThreeDigests(b *testing.B) {
	data := make([]byte, 4<<20)
	b.Run("sha256lanes", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		var h Hasher
		for b.Loop() {
			h.Start(1, nil)
			h.Start(2, nil)
			h.Write(data)
			h.Sum(1, nil)
			h.Sum(2, nil)
		}
	})
	b.Run("crypto-sha256", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			for range Lanes {
				h := sha256.New()
				h.Write(data)
				h.Sum(nil)
			}
		}
	})
}
