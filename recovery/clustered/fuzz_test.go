package clustered

import (
	"testing"

	"github.com/flowkeep/flowkeep/recovery"
)

// FuzzPeerMessages: no commit or frontier message a peer sends can crash
// the process; a malformed one is an error or ignored.
func FuzzPeerMessages(f *testing.F) {
	f.Add(encodeCommit(1, 7, []recovery.Row{{Step: "s", Key: "k", Epoch: 6, Value: []byte("v")}, {Step: "s", Key: "gone", Epoch: 6}}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 3})
	f.Add([]byte{2, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		if w, fr, _, err := decodeCommit(b); err == nil && (w < 0 || fr >= 1<<62) {
			t.Fatalf("decodeCommit accepted worker %d frontier %d", w, fr)
		}
		r := &Recovery{pmin: make([]recovery.Epoch, 3), risen: make(chan struct{})}
		r.onPmin(1, b)
	})
}
