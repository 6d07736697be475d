package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/core"
)

// readAll opens part of src at resume, reads it to the end and returns the
// lines and the position.
func readAll(t *testing.T, src core.Source[string], part string, resume []byte) ([]string, []byte, error) {
	t.Helper()
	p, err := src.Open(context.Background(), part, resume)
	if err != nil {
		return nil, nil, err
	}
	defer p.Close()
	var got []string
	for {
		b, err := p.NextBatch(context.Background(), time.Millisecond)
		got = append(got, b...)
		if errors.Is(err, io.EOF) {
			return got, p.Position(), nil
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestSource_Resume(t *testing.T) {
	var first []string
	for i := range 1500 { // more than both 4 KiB windows
		first = append(first, fmt.Sprintf("line %04d of the input", i))
	}
	content := strings.Join(first, "\n") + "\n"
	tests := []struct {
		name string
		dir  bool // read as a DirSource partition, else as a Source
		bare bool // the position is a bare offset, as earlier versions stored
		// prepare makes the input to resume with, given the flow's own
		// input in; it returns its path.
		prepare func(t *testing.T, in string) string
		want    []string // the lines the resume reads; nil: refused
		err     error    // if refused, errors.Is this (nil: any error)
		msg     string
	}{
		{name: "appended to the same file", prepare: func(t *testing.T, in string) string {
			appendFile(t, in, "more\n")
			return in
		}, want: []string{"more"}},
		{name: "copy at another path, appended", prepare: func(t *testing.T, in string) string {
			c := filepath.Join(filepath.Dir(filepath.Dir(in)), "C", filepath.Base(in))
			os.Mkdir(filepath.Dir(c), 0o755)
			writeOld(t, c, append(readFile(t, in), "more\n"...))
			return c
		}, want: []string{"more"}},
		{name: "unrelated file of the same name", prepare: func(t *testing.T, in string) string {
			return other(t, in, []byte(strings.Repeat("another input\n", 3000)))
		}, err: ErrOtherFile, msg: "not the file this flow read"},
		{name: "rewritten in place, last line changed", prepare: func(t *testing.T, in string) string {
			writeOld(t, in, []byte(strings.Replace(content, "line 1499", "LINE 1499", 1)+"more\n"))
			return in
		}, err: ErrOtherFile},
		{name: "in a directory: a file replaced under its name", dir: true, prepare: func(t *testing.T, in string) string {
			writeOld(t, in, []byte(strings.Replace(content, "line 0000", "line zero", 1)+"more\n"))
			return in
		}, err: ErrOtherFile},
		{name: "in a directory: appended", dir: true, prepare: func(t *testing.T, in string) string {
			appendFile(t, in, "more\n")
			return in
		}, want: []string{"more"}},
		{name: "shorter than the position", prepare: func(t *testing.T, in string) string {
			writeOld(t, in, []byte(content[:100]))
			return in
		}, msg: "truncated or replaced"},
		{name: "bare offset", bare: true, prepare: func(t *testing.T, in string) string {
			appendFile(t, in, "more\n")
			return in
		}, want: []string{"more"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			in := filepath.Join(root, "A", "in.txt")
			os.Mkdir(filepath.Dir(in), 0o755)
			writeOld(t, in, []byte(content))
			src := func(path string) core.Source[string] {
				if tt.dir {
					return DirSource{Dir: filepath.Dir(path)}
				}
				return Source{Path: path}
			}
			got, pos, err := readAll(t, src(in), "in.txt", nil)
			if err != nil || len(got) != len(first) {
				t.Fatalf("first run read %d lines, %v", len(got), err)
			}
			if tt.bare {
				pos = strconv.AppendInt(nil, int64(len(content)), 10)
			}
			path := tt.prepare(t, in)
			got, _, err = readAll(t, src(path), "in.txt", pos)
			if tt.want != nil {
				if err != nil || !slices.Equal(got, tt.want) {
					t.Fatalf("resume read %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("resume read %d lines, want refused", len(got))
			}
			if tt.err != nil && !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q, want %v saying %q and naming %s", err, tt.err, tt.msg, path)
			}
		})
	}
}
