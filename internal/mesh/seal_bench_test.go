package mesh

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"

	"github.com/flowkeep/flowkeep/internal/freeport"

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

// BenchmarkMeshThroughput: data frames of 16 KiB (an exchange's batch) from
// one process to another over loopback, without a secret and with one
// (sealed); MB/s of payload.
func BenchmarkMeshThroughput(b *testing.B) {
	for _, secret := range []string{"", "s3cret"} {
		name := "none"
		if secret != "" {
			name = "secret"
		}
		b.Run(name, func(b *testing.B) {
			addrs, err := freeport.Addrs(2)
			if err != nil {
				b.Fatal(err)
			}
			ms := make([]*Mesh, 2)
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ms[i], errs[i] = Dial(context.Background(), Config{Self: i, Addresses: addrs, Secret: []byte(secret)}, "bench", func(error) {})
				}()
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
			defer func() {
				go ms[1].Close(context.Background(), nil)
				ms[0].Close(context.Background(), nil)
			}()
			const size = 16 << 10
			got := make(chan struct{}, 1024)
			ms[1].HandleData(func(int, DataHeader, []byte) error { got <- struct{}{}; return nil })
			b.SetBytes(size)
			go func() {
				for range b.N {
					ms[0].SendData(context.Background(), 1, DataHeader{}, make([]byte, DataHeaderLen+size))
				}
			}()
			for range b.N {
				<-got
			}
		})
	}
}
