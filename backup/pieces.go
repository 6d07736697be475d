package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
)

// PiecesPutter is a Store that can write an object given as pieces laid
// end to end, without their being copied into one buffer first: a chunk
// is stored from its compressed frames' own buffers. PutPieces is Put of
// the pieces joined, under Put's contract.
type PiecesPutter interface {
	PutPieces(ctx context.Context, key string, pieces [][]byte) error
}

// putPieces stores pieces as the object at key through the PutPieces of s,
// or of the store s retries (retried as its Put is); ok is false, and
// nothing is written, where there is none.
func putPieces(ctx context.Context, s Store, key string, pieces [][]byte) (ok bool, err error) {
	switch s := s.(type) {
	case *retrying:
		pp, ok := s.s.(PiecesPutter)
		if !ok {
			return false, nil
		}
		return true, s.do(ctx, "put "+key, func() error { return pp.PutPieces(ctx, key, pieces) })
	case PiecesPutter:
		return true, s.PutPieces(ctx, key, pieces)
	}
	return false, nil
}

// sumPieces is the hex sha256 of pieces laid end to end.
func sumPieces(pieces [][]byte) string {
	h := sha256.New()
	for _, p := range pieces {
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Pieces reads byte slices laid end to end as one body, which can be read
// again (Seek): a request body a client may send twice.
type Pieces struct {
	p    [][]byte
	size int64
	off  int64 // where the next Read starts
}

// NewPieces returns a body of p laid end to end.
func NewPieces(p [][]byte) *Pieces {
	var n int64
	for _, b := range p {
		n += int64(len(b))
	}
	return &Pieces{p: p, size: n}
}

// Size is the length of the whole body.
func (r *Pieces) Size() int64 { return r.size }

// Read implements io.Reader.
func (r *Pieces) Read(b []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(b) && r.off < r.size {
		p, at := r.at(r.off)
		k := copy(b[n:], p[at:])
		n += k
		r.off += int64(k)
	}
	return n, nil
}

// WriteTo implements io.WriterTo: each piece is written as it is.
func (r *Pieces) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for r.off < r.size {
		p, at := r.at(r.off)
		k, err := w.Write(p[at:])
		n += int64(k)
		r.off += int64(k)
		if err != nil {
			return n, err
		}
		if k < len(p)-at {
			return n, io.ErrShortWrite
		}
	}
	return n, nil
}

// at returns the piece holding byte off and where in it off is.
func (r *Pieces) at(off int64) ([]byte, int) {
	for _, p := range r.p {
		if off < int64(len(p)) {
			return p, int(off)
		}
		off -= int64(len(p))
	}
	return nil, 0
}

// Seek implements io.Seeker.
func (r *Pieces) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errors.New("pieces: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("pieces: negative position")
	}
	r.off = offset
	return offset, nil
}
