package mesh

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

// BenchmarkFrameAEAD: why frames are sealed with AES-GCM. Each op seals and
// opens one frame of the size named; ChaCha20-Poly1305 and HMAC-SHA256 (over
// the frame twice, as a sender and a receiver would) for comparison.
func BenchmarkFrameAEAD(b *testing.B) {
	key := make([]byte, 32)
	blk, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(blk)
	cc, _ := chacha20poly1305.New(key)
	for _, size := range []int{11, 1 << 10, 16 << 10, 256 << 10} {
		for _, a := range []struct {
			name string
			aead cipher.AEAD
		}{{"aes-gcm", gcm}, {"chacha20poly1305", cc}} {
			b.Run(fmt.Sprintf("%s/%d", a.name, size), func(b *testing.B) {
				buf := make([]byte, size, size+16)
				nonce := make([]byte, 12)
				b.SetBytes(int64(size))
				for b.Loop() {
					out := a.aead.Seal(buf[:0], nonce, buf, nil)
					if _, err := a.aead.Open(out[:0], nonce, out, nil); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(fmt.Sprintf("hmac-sha256/%d", size), func(b *testing.B) {
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			for b.Loop() {
				h := hmac.New(sha256.New, key)
				h.Write(buf)
				h.Sum(nil)
				h = hmac.New(sha256.New, key)
				h.Write(buf)
				h.Sum(nil)
			}
		})
	}
}
