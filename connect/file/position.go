package file

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
)

// ErrOtherFile is returned (wrapped) when a resume finds another file under
// a partition's name: the bytes before the stored position are not those the
// flow wrote (Sink) or read (Source and DirSource). The file is left as it
// was: a sink neither truncates nor writes it, a source does not read it.
var ErrOtherFile = errors.New("not the file this flow used")

// checkWindow is how many bytes at each end of the committed part of a file
// a position's checksum covers.
const checkWindow = 4096

// position is a file partition's resume state. Earlier versions stored the
// bare decimal byte offset; those still parse (Sum empty) and resume
// unchecked, as they did. This version stores JSON:
//
//	{"offset":N,"sha256":HEX,"path":ABS}
//
// Sum is the sha256 of the bytes [0,h) and [max(h,N-4096),N) of the file,
// h = min(N,4096): its first and last 4 KiB before the position (every byte
// before it when N is at most 8 KiB). A resume compares it with the file it finds before touching
// it, so the same file, or a copy of it on other storage or at another path
// (a disaster-recovery restore), resumes, and another file of the same name
// does not. Path is the absolute path the position was taken at: for
// messages, and for the one case the content cannot decide, a sink at offset
// 0 finding a non-empty file (only at that path is it taken to be the flow's
// own uncommitted output). Device and inode are not kept: shared storage
// mounted on another machine, or after a reboot, has other numbers for the
// same file.
type position struct {
	Offset int64  `json:"offset"`
	Sum    string `json:"sha256,omitempty"`
	Path   string `json:"path,omitempty"`
}

func parsePosition(b []byte) (position, error) {
	var p position
	if len(b) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, &p); err != nil || p.Offset < 0 || p.Sum == "" || p.Path == "" {
			return position{}, fmt.Errorf("stored position %q is not a file position", b)
		}
		return p, nil
	}
	off, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || off < 0 {
		return position{}, fmt.Errorf("stored position %q is not a byte offset", b)
	}
	return position{Offset: off}, nil
}

func (p position) encode() []byte {
	b, _ := json.Marshal(p) // cannot fail: strings and an integer
	return b
}

// checked reports whether p can be compared with a file (positions of
// earlier versions cannot).
func (p position) checked() bool { return p.Sum != "" }

// takePosition makes the position off of f, which is at path (absolute).
func takePosition(f io.ReaderAt, path string, off int64) (position, error) {
	sum, err := contentSum(f, off)
	if err != nil {
		return position{}, err
	}
	return position{Offset: off, Sum: sum, Path: path}, nil
}

// contentSum is the checksum a position at off keeps of r (see position).
func contentSum(r io.ReaderAt, off int64) (string, error) {
	h := min(off, checkWindow)
	t := max(h, off-checkWindow)
	buf := make([]byte, h+(off-t))
	if _, err := r.ReadAt(buf[:h], 0); err != nil && h > 0 {
		return "", fmt.Errorf("read the first %d bytes: %w", h, err)
	}
	if _, err := r.ReadAt(buf[h:], t); err != nil && off > t {
		return "", fmt.Errorf("read bytes %d..%d: %w", t, off, err)
	}
	s := sha256.Sum256(buf)
	return hex.EncodeToString(s[:]), nil
}

// matches reports whether f, at least p.Offset bytes long, holds the bytes p
// was taken over.
func (p position) matches(f io.ReaderAt) (bool, error) {
	sum, err := contentSum(f, p.Offset)
	if err != nil {
		return false, err
	}
	return sum == p.Sum, nil
}

// absPath is path made absolute, or path if it cannot be.
func absPath(path string) string {
	if a, err := filepath.Abs(path); err == nil {
		return a
	}
	return path
}

// elsewhere says where p was taken if not at path ("" if there, or unknown).
func (p position) elsewhere(path string) string {
	if p.Path == "" || p.Path == absPath(path) {
		return ""
	}
	return " (as " + p.Path + ")"
}

// otherFileError is an ErrOtherFile with its own message.
type otherFileError struct{ msg string }

func (e *otherFileError) Error() string        { return e.msg }
func (e *otherFileError) Is(target error) bool { return target == ErrOtherFile }

func otherFile(format string, args ...any) error {
	return &otherFileError{fmt.Sprintf(format, args...)}
}
