package clustered

import (
	"testing"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
)

// FuzzPeerMessages: no commit, frontier, lookup or scan message a peer
// sends can crash the process; a malformed one is an error or ignored.
func FuzzPeerMessages(f *testing.F) {
	f.Add(encodeCommit(1, 7, []recovery.Row{{Step: "s", Key: "k", Epoch: 6, Value: []byte("v")}, {Step: "s", Key: "gone", Epoch: 6}}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 3})
	f.Add([]byte{2, 9})
	f.Add(scanRequest{id: 3, step: "s", after: 4, every: true, share: core.KeyShare{Worker: 1, Workers: 3}}.encode())
	f.Add(appendScanRow(appendScanRow(nil, "a", 2, []byte("x")), "b", 3, nil))
	f.Add(appendReadRow(nil, 1, 5, []byte("v")))
	f.Fuzz(func(t *testing.T, b []byte) {
		if w, fr, _, err := decodeCommit(b); err == nil && (w < 0 || fr >= 1<<62) {
			t.Fatalf("decodeCommit accepted worker %d frontier %d", w, fr)
		}
		r := &Recovery{pmin: make([]recovery.Epoch, 3), risen: make(chan struct{})}
		r.onPmin(1, b)

		o := testOnDemand(2)
		o.onWritten(1, b)
		o.onReply(1, b)
		o.onScanMore(1, b)
		o.onScanStop(1, b)
		o.readRequest(b)
		if q, err := decodeScanRequest(b); err == nil && q.share.Workers > 0 && int(q.share.Worker) >= q.share.Workers {
			t.Fatalf("scan request for worker %d of %d accepted", q.share.Worker, q.share.Workers)
		}
		decodeReadRows(b, 2, func(i int, _ core.Epoch, _ []byte) error {
			if i < 0 || i >= 2 {
				t.Fatalf("lookup reply row %d of a request of 2 keys", i)
			}
			return nil
		})
		frames := [][]byte{b}
		src := &scanSource{from: 1, next: func() (byte, []byte, error) {
			f := frames[0]
			frames = frames[1:]
			return flagLast, f, nil
		}}
		for {
			ok, err := src.advance()
			if !ok || err != nil {
				break
			}
		}
	})
}
