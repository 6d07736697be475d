package backup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"testing/iotest"
)

// slowReader hands out its bytes a few at a time, so the spool's reader
// catches up with the copy and must wait for it.
type slowReader struct{ b []byte }

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 3)], r.b)
	r.b = r.b[n:]
	return n, nil
}

func TestSpool_ReadsWhatTheCopyWroteAndEndsAsItDid(t *testing.T) {
	data := bytes.Repeat([]byte("flowkeep pages "), 200_000) // 3 MB: more than one copy buffer
	boom := errors.New("the partition could not be read")
	for _, c := range []struct {
		name    string
		src     io.Reader
		want    []byte
		wantErr error
	}{
		{"whole", bytes.NewReader(data), data, nil},
		{"slow source", &slowReader{b: data[:1000]}, data[:1000], nil},
		{"empty", bytes.NewReader(nil), nil, nil},
		{"source fails half-way", io.MultiReader(bytes.NewReader(data[:5000]), iotest.ErrReader(boom)), data[:5000], boom},
	} {
		t.Run(c.name, func(t *testing.T) {
			finished := make(chan struct{})
			dir := t.TempDir()
			// A memory bound of 64 KiB: most of the stream goes through
			// the file when the reader lags, as here, where it reads only
			// once the copy has ended.
			sp := newSpool(context.Background(), dir, "spool-*", 64<<10, c.src, func() { close(finished) })
			<-finished
			got, err := io.ReadAll(sp)
			if !bytes.Equal(got, c.want) || !errors.Is(err, c.wantErr) || (c.wantErr == nil && err != nil) {
				t.Fatalf("read %d bytes (want %d), err %v (want %v)", len(got), len(c.want), err, c.wantErr)
			}
			if len(c.want) > 64<<10 && sp.Spilt() == 0 {
				t.Fatal("nothing went through the file beyond the memory bound")
			}
			if err := sp.Close(); err != nil {
				t.Fatal(err)
			}
			if left, _ := os.ReadDir(dir); len(left) != 0 {
				t.Fatalf("the staged file is still there: %v", left)
			}
		})
	}
}

// Closing a spool whose upload gave up ends the copy when its context is
// cancelled, and removes the file.
func TestSpool_CancelledCopyEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	endless := iotest.OneByteReader(bytes.NewReader(bytes.Repeat([]byte("x"), 8<<20)))
	sp := newSpool(ctx, t.TempDir(), "spool-*", 64<<10, endless, func() {})
	cancel()
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
}

// A reader that keeps up takes everything from memory: nothing is
// written to the disk.
func TestSpool_AReaderThatKeepsUpLeavesTheDiskAlone(t *testing.T) {
	data := bytes.Repeat([]byte("p"), 8<<20)
	sp := newSpool(context.Background(), t.TempDir(), "spool-*", spoolMemory, bytes.NewReader(data), func() {})
	got, err := io.ReadAll(sp)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes: %v", len(got), err)
	}
	if sp.Spilt() != 0 {
		t.Fatalf("%d bytes went through the file", sp.Spilt())
	}
	sp.Close()
}
