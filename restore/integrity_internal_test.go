package restore

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// countingFile counts the reads that reach the file.
type countingFile struct {
	*os.File
	reads int
	bytes int
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) {
	c.reads++
	c.bytes += len(p)
	return c.File.ReadAt(p, off)
}

// SQLite reads an image through aheadFile a page at a time (Seek, then
// Read): every read gets the file's bytes, reads that follow on are served
// from a few large reads, scattered reads cost no more reads than pages nor
// many more bytes, and reads past the end come back short.
func TestAheadFile_ReadsAheadOnlyWhereReadsFollowOn(t *testing.T) {
	const page = 4096
	const pages = 16000 // 250 windows, and a short page
	data := make([]byte, pages*page+100)
	for i := range data {
		data[i] = byte(i*7 + i/page)
	}
	path := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	seq := make([]int, pages)
	for i := range seq {
		seq[i] = i
	}
	random := append([]int(nil), seq...)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(random), func(i, j int) { random[i], random[j] = random[j], random[i] })
	// A B-tree walk: a leaf at a time, in order, and now and then the
	// interior page above them, from the end of the file.
	var walk []int
	leaves := pages * 20 / 21
	for i := 0; i < leaves; i++ {
		if i%20 == 0 {
			walk = append(walk, leaves+i/20)
		}
		walk = append(walk, i)
	}
	for _, tc := range []struct {
		name     string
		order    []int
		maxReads int
		maxBytes int
	}{
		{"in order", seq, pages * page / aheadSize * 2, 2 * len(data)},
		{"a walk over two regions", walk, pages * page / aheadSize * 3, 2 * len(data)},
		{"random", random, pages + pages/10, len(data) + len(data)/10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			cf := &countingFile{File: f}
			a := &aheadFile{f: cf, window: true}
			defer a.Close()
			buf := make([]byte, page)
			for _, pg := range tc.order {
				if _, err := a.Seek(int64(pg*page), io.SeekStart); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(a, buf); err != nil {
					t.Fatalf("page %d: %v", pg, err)
				}
				if !bytes.Equal(buf, data[pg*page:(pg+1)*page]) {
					t.Fatalf("page %d: other bytes than the file's", pg)
				}
			}
			if cf.reads > tc.maxReads || cf.bytes > tc.maxBytes {
				t.Fatalf("%d reads of the file, %d bytes, for %d pages (at most %d reads, %d bytes)", cf.reads, cf.bytes, len(tc.order), tc.maxReads, tc.maxBytes)
			}
			// The last page is short: what is there, then zeroes for SQLite.
			a.Seek(int64(pages*page), io.SeekStart)
			n, err := io.ReadFull(a, buf)
			if n != 100 || err != io.ErrUnexpectedEOF || !bytes.Equal(buf[:n], data[pages*page:]) {
				t.Fatalf("read at the end: %d bytes, %v", n, err)
			}
			a.Seek(int64(pages*page+page), io.SeekStart)
			if n, err := io.ReadFull(a, buf); n != 0 || err != io.EOF {
				t.Fatalf("read past the end: %d bytes, %v", n, err)
			}
		})
	}
}
