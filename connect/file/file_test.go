package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/core"
)

// writeSink opens the sink at path (resuming at resume), writes lines, commits
// and returns the committed position.
func writeSink(t *testing.T, path string, resume []byte, lines ...string) []byte {
	t.Helper()
	ctx := context.Background()
	p, err := Sink{Path: path}.Open(ctx, filepath.Base(path), resume)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(ctx, lines); err != nil {
		t.Fatal(err)
	}
	pos, err := p.Commit(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return pos
}

// fileState is a file's content and modification time, to show it untouched.
type fileState struct {
	data  []byte
	mtime time.Time
}

func stateOf(t *testing.T, path string) fileState {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileState{b, st.ModTime()}
}

func (s fileState) unchanged(t *testing.T, path string) {
	t.Helper()
	now := stateOf(t, path)
	if !bytes.Equal(now.data, s.data) || !now.mtime.Equal(s.mtime) {
		t.Fatalf("%s was touched: %d bytes (mtime %v), was %d bytes (mtime %v)", path, len(now.data), now.mtime, len(s.data), s.mtime)
	}
}

// writeOld writes b to path with a modification time an hour ago, so that a
// write within the test's second cannot hide behind the same mtime.
func writeOld(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

// The security review's finding: a flow run again with its output pointed
// at another directory resumed the unrelated file there (same base name)
// and truncated it to the old position.
func TestSink_ResumeLeavesUnrelatedFileOfSameNameUntouched(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "A", "counts.csv"), filepath.Join(dir, "B", "counts.csv")
	os.Mkdir(filepath.Dir(a), 0o755)
	os.Mkdir(filepath.Dir(b), 0o755)
	pos := writeSink(t, a, nil, "apple,1", "banana,2")
	writeOld(t, b, []byte("somebody else's numbers, many more bytes than the flow wrote\n"))
	before := stateOf(t, b)
	p, err := Sink{Path: b}.Open(context.Background(), "counts.csv", pos)
	if err == nil {
		p.Write(context.Background(), []string{"cherry,1"})
		p.Commit(context.Background(), 2)
		p.Close(context.Background())
		t.Errorf("resumed into an unrelated file")
	} else if !errors.Is(err, ErrOtherFile) || !strings.Contains(err.Error(), a) || !strings.Contains(err.Error(), b) {
		t.Errorf("error %q: want ErrOtherFile naming both files", err)
	}
	before.unchanged(t, b)
}

func TestSink_Resume(t *testing.T) {
	var lines []string
	for i := range 2000 { // more than both 4 KiB windows
		lines = append(lines, fmt.Sprintf("word%04d,%d", i, i%7))
	}
	committed := strings.Join(lines, "\n") + "\n"
	errAny := errors.New("any error")
	tests := []struct {
		name string
		// empty: the flow had written nothing when the position was taken.
		empty bool
		// bare: the position is a bare offset, as earlier versions stored.
		bare bool
		// prepare makes the file to resume with, given the flow's own
		// output a; it returns its path.
		prepare func(t *testing.T, a string) string
		want    error // nil: resumes; else refused (errAny: any error)
		msg     string
	}{
		{name: "restart on the same file", prepare: func(t *testing.T, a string) string { return a }},
		{name: "restart discards uncommitted output", prepare: func(t *testing.T, a string) string {
			appendFile(t, a, "uncommitted,1\n")
			return a
		}},
		{name: "copy at another path", prepare: func(t *testing.T, a string) string {
			c := filepath.Join(filepath.Dir(filepath.Dir(a)), "C", "counts.csv")
			os.Mkdir(filepath.Dir(c), 0o755)
			writeOld(t, c, append(readFile(t, a), "uncommitted,1\n"...))
			return c
		}},
		{name: "copy at the same path (new inode, as on restored storage)", prepare: func(t *testing.T, a string) string {
			b := readFile(t, a)
			os.Remove(a)
			writeOld(t, a, b)
			return a
		}},
		{name: "unrelated file of the same name", want: ErrOtherFile, msg: "left untouched", prepare: func(t *testing.T, a string) string {
			return other(t, a, bytes.Repeat([]byte("x,1\n"), len(committed)))
		}},
		{name: "same start, last line differs", want: ErrOtherFile, prepare: func(t *testing.T, a string) string {
			return other(t, a, []byte(strings.Replace(committed, "word1999,4", "word1999,5", 1)+"more,1\n"))
		}},
		{name: "same end, first line differs", want: ErrOtherFile, prepare: func(t *testing.T, a string) string {
			return other(t, a, []byte(strings.Replace(committed, "word0000,0", "word0000,1", 1)))
		}},
		{name: "file shorter than the position", want: errAny, msg: "truncated or replaced", prepare: func(t *testing.T, a string) string {
			return other(t, a, []byte(committed[:len(committed)-1]))
		}},
		{name: "file missing", want: errAny, msg: "does not exist", prepare: func(t *testing.T, a string) string {
			b := filepath.Join(filepath.Dir(filepath.Dir(a)), "B", "counts.csv")
			os.Mkdir(filepath.Dir(b), 0o755)
			return b
		}},
		{name: "bare offset on the same file", bare: true, prepare: func(t *testing.T, a string) string {
			appendFile(t, a, "uncommitted,1\n")
			return a
		}},
		{name: "bare offset after an upgrade, copy at another path", bare: true, prepare: func(t *testing.T, a string) string {
			return other(t, a, readFile(t, a))
		}},
		{name: "nothing written, same file with uncommitted output", empty: true, prepare: func(t *testing.T, a string) string {
			appendFile(t, a, "uncommitted,1\n")
			return a
		}},
		{name: "nothing written, empty file elsewhere", empty: true, prepare: func(t *testing.T, a string) string {
			return other(t, a, nil)
		}},
		{name: "nothing written, unrelated file elsewhere", empty: true, want: ErrOtherFile, msg: "left untouched", prepare: func(t *testing.T, a string) string {
			return other(t, a, []byte("x,1\n"))
		}},
		// Trusted by path alone: shared storage seen from another machine
		// has another device and inode for the same file.
		{name: "nothing written, file replaced at the same path", empty: true, prepare: func(t *testing.T, a string) string {
			writeOld(t, a+".new", []byte("x,1\n"))
			if err := os.Rename(a+".new", a); err != nil {
				t.Fatal(err)
			}
			return a
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			a := filepath.Join(dir, "A", "counts.csv")
			os.Mkdir(filepath.Dir(a), 0o755)
			want, pos := committed, []byte(nil)
			if tt.empty {
				want, pos = "", writeSink(t, a, nil)
			} else {
				pos = writeSink(t, a, nil, lines...)
			}
			if tt.bare {
				pos = strconv.AppendInt(nil, int64(len(want)), 10)
			}
			if got := string(readFile(t, a)); got != want {
				t.Fatalf("first run wrote %d bytes, want %d", len(got), len(want))
			}
			path := tt.prepare(t, a)
			var before fileState
			if _, err := os.Stat(path); err == nil {
				before = stateOf(t, path)
			}
			p, err := Sink{Path: path}.Open(context.Background(), "counts.csv", pos)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				p.Write(context.Background(), []string{"new,1"})
				if _, err := p.Commit(context.Background(), 2); err != nil {
					t.Fatal(err)
				}
				p.Close(context.Background())
				if got := string(readFile(t, path)); got != want+"new,1\n" {
					t.Fatalf("%s holds %d bytes, want the %d committed and a new line", path, len(got), len(want))
				}
				return
			}
			if err == nil {
				p.Close(context.Background())
				t.Fatalf("resumed, want %v", tt.want)
			}
			if tt.want != errAny && !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q, want %v saying %q and naming %s", err, tt.want, tt.msg, path)
			}
			if before.data == nil && before.mtime.IsZero() {
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s was created (%v)", path, err)
				}
				return
			}
			before.unchanged(t, path)
		})
	}
}

// other writes b to a file named like a (counts.csv) in another directory.
func other(t *testing.T, a string, b []byte) string {
	t.Helper()
	p := filepath.Join(filepath.Dir(filepath.Dir(a)), "B", filepath.Base(a))
	os.Mkdir(filepath.Dir(p), 0o755)
	writeOld(t, p, b)
	return p
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Written lines are in the file after Flush, before the epoch commits (a
// resume truncates them if no epoch does); with Sorted, an epoch's lines
// wait for Commit and arrive sorted.
func TestSink_FlushShowsLinesSortedWaitsForCommit(t *testing.T) {
	ctx := context.Background()
	for _, sorted := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "out.csv")
		p, err := Sink{Path: path, Sorted: sorted}.Open(ctx, "out.csv", nil)
		if err != nil {
			t.Fatal(err)
		}
		p.Write(ctx, []string{"b,1", "a,1"})
		if err := p.(core.Flusher).Flush(ctx); err != nil {
			t.Fatal(err)
		}
		want := "b,1\na,1\n"
		if sorted {
			want = ""
		}
		if got := string(readFile(t, path)); got != want {
			t.Fatalf("sorted=%v: after Flush the file holds %q, want %q", sorted, got, want)
		}
		if _, err := p.Commit(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if sorted {
			want = "a,1\nb,1\n"
		}
		if got := string(readFile(t, path)); got != want {
			t.Fatalf("sorted=%v: after Commit the file holds %q, want %q", sorted, got, want)
		}
		p.Close(ctx)
	}
}
