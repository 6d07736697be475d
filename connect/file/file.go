// Package file holds flowkeep's file connectors: Source (one file),
// DirSource (every file in a directory, one partition each) and Sink (one
// output file, exactly-once with recovery). They are built on core's public
// Source and Sink contracts only, as a user's own connector would be.
package file

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/flowkeep/flowkeep/core"
)

// Source reads one file line by line; it has one partition named after
// the file's base name, and its position is the byte offset after the last
// line read, with a checksum of the file's first and last 4 KiB before it.
// A last line without a newline counts as a line. Appending to the
// file and running again reads only what was appended. A resume first checks
// that the file holds what was read up to the position (the same file, or a
// copy of it anywhere); another file under the same base name is refused
// with ErrOtherFile rather than read from the middle.
type Source struct{ Path string }

// Partitions implements core.Source.
func (s Source) Partitions(context.Context) ([]string, error) {
	if _, err := os.Stat(s.Path); err != nil {
		return nil, fmt.Errorf("input file: %w", err)
	}
	return []string{filepath.Base(s.Path)}, nil
}

// Open implements core.Source.
func (s Source) Open(_ context.Context, _ string, resume []byte) (core.SourcePartition[string], error) {
	return openLines(s.Path, resume)
}

// DirSource reads every regular file directly in Dir, one partition per file
// (named by file name), each like Source (with the same check on resume).
// Files added between runs are read from the start by the next run.
type DirSource struct{ Dir string }

// Partitions implements core.Source.
func (s DirSource) Partitions(context.Context) ([]string, error) {
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("input directory: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// Open implements core.Source.
func (s DirSource) Open(_ context.Context, part string, resume []byte) (core.SourcePartition[string], error) {
	return openLines(filepath.Join(s.Dir, part), resume)
}

// linesPerBatch bounds the lines one NextBatch returns.
const linesPerBatch = 1024

type linePartition struct {
	f     *os.File
	r     *bufio.Reader
	path  string // absolute
	pos   int64
	batch []string
	long  []byte
	// The last position taken, at offset lastOff.
	last    []byte
	lastOff int64
}

func openLines(path string, resume []byte) (*linePartition, error) {
	var pos position
	if resume != nil {
		var err error
		if pos, err = parsePosition(resume); err != nil {
			return nil, fmt.Errorf("input %s: %w", path, err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if resume != nil {
		if err := checkInput(f, path, pos); err != nil {
			f.Close()
			return nil, err
		}
		if _, err := f.Seek(pos.Offset, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
	}
	return &linePartition{f: f, r: bufio.NewReaderSize(f, 256<<10), path: absPath(path), pos: pos.Offset}, nil
}

// checkInput returns why f, the input at path, must not be read from pos,
// or nil.
func checkInput(f *os.File, path string, pos position) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() < pos.Offset {
		return fmt.Errorf("%s has %d bytes but %d were already read%s: the input was truncated or replaced; restore it or start a new flow", path, st.Size(), pos.Offset, pos.elsewhere(path))
	}
	if !pos.checked() || pos.Offset == 0 {
		return nil // an earlier version's bare offset, or nothing read yet
	}
	ok, err := pos.matches(f)
	if err != nil {
		return fmt.Errorf("input %s: check it is the file this flow read: %w", path, err)
	}
	if !ok {
		return otherFile("input %s is not the file this flow read, so it was not read: its first %d bytes differ from those the flow read from %s; restore that file (or a copy of it) here, or give this one another name to have it read from its start", path, pos.Offset, pos.Path)
	}
	return nil
}

func (p *linePartition) NextBatch(_ context.Context, _ time.Duration) ([]string, error) {
	p.batch = p.batch[:0]
	for len(p.batch) < linesPerBatch {
		line, err := p.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			p.long = append(p.long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = p.r.ReadSlice('\n')
				p.long = append(p.long, line...)
			}
			line = p.long
		}
		if len(line) > 0 {
			p.pos += int64(len(line))
			line = bytes.TrimSuffix(line, []byte{'\n'})
			line = bytes.TrimSuffix(line, []byte{'\r'})
			p.batch = append(p.batch, string(line))
		}
		if err == io.EOF {
			return p.batch, io.EOF
		}
		if err != nil {
			return p.batch, err
		}
		if p.r.Buffered() == 0 && len(p.batch) > 0 {
			break // hand over what we have before blocking on the next read
		}
	}
	return p.batch, nil
}

// Position is the offset after the last line read, with a checksum of the
// bytes before it (see position).
func (p *linePartition) Position() []byte {
	if p.last != nil && p.lastOff == p.pos {
		return p.last
	}
	pos, err := takePosition(p.f, p.path, p.pos)
	if err != nil {
		// The bytes just read are gone (the input was truncated under the
		// reader): a bare offset, which a resume checks only against the
		// size, as earlier versions did.
		return strconv.AppendInt(nil, p.pos, 10)
	}
	p.last, p.lastOff = pos.encode(), p.pos
	return p.last
}

func (p *linePartition) Close() error { return p.f.Close() }

// Sink writes lines to one file (one partition, named after the file's
// base name). Written lines are visible at once: they reach the file (not
// yet the disk) when the flow has nothing more to give right now, and at
// least every few milliseconds under load, never held until the epoch
// closes. Commit fsyncs, and its position is the file size with a checksum
// of the file's first and last 4 KiB before it; on resume the file is
// truncated to the stored position, so together with recovery the file's
// content is exactly-once (a reader may see lines a crash then takes back).
// A resume first checks that the file holds what the flow wrote up to the
// position (the same file, or a copy of it at any path or on other
// storage); another file under the same base name is refused with
// ErrOtherFile and left untouched. A file this flow has not written (a
// fresh run, or a later run pointed at another file) must be empty unless
// Overwrite is set.
type Sink struct {
	Path string
	// Sorted holds each epoch's lines and writes them in sorted order when
	// the epoch commits, which makes the file independent of how many
	// workers produced it and in which order. It delays visibility: no line
	// reaches the file before its epoch ends (-s later at worst).
	Sorted bool
	// Overwrite allows a fresh run to replace an existing non-empty file.
	Overwrite bool
}

// Partitions implements core.Sink.
func (s Sink) Partitions(context.Context) ([]string, error) {
	return []string{filepath.Base(s.Path)}, nil
}

// PartitionFor implements core.Sink.
func (s Sink) PartitionFor(string) string { return filepath.Base(s.Path) }

// Open implements core.Sink.
func (s Sink) Open(ctx context.Context, _ string, resume []byte) (core.SinkPartition[string], error) {
	dir := filepath.Dir(s.Path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("output directory %s does not exist", dir)
	}
	var pos position
	if resume != nil {
		var err error
		if pos, err = parsePosition(resume); err != nil {
			return nil, fmt.Errorf("output %s: %w", s.Path, err)
		}
	}
	flag := os.O_RDWR | os.O_CREATE
	if resume != nil && pos.Offset > 0 {
		flag = os.O_RDWR // the flow wrote to it: never create it empty
	}
	f, err := os.OpenFile(s.Path, flag, 0o644)
	if errors.Is(err, fs.ErrNotExist) && flag&os.O_CREATE == 0 {
		return nil, fmt.Errorf("output %s does not exist but this flow already wrote %d bytes to it%s: restore it (or a copy of it) there, or write to a file of another name", s.Path, pos.Offset, pos.elsewhere(s.Path))
	}
	if err != nil {
		return nil, err
	}
	path := absPath(s.Path)
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	var off int64
	switch {
	case resume != nil:
		if err := s.checkResume(f, st.Size(), path, pos); err != nil {
			f.Close()
			return nil, err
		}
		off = pos.Offset
	case st.Size() == 0 || s.Overwrite:
	case core.RunInfoFrom(ctx).Execution > 0 && core.RunInfoFrom(ctx).StartEpoch <= 1:
		// A re-execution before any epoch was durable: what the file holds
		// was written by an earlier attempt that never committed.
	case core.RunInfoFrom(ctx).Execution > 0:
		// Epochs are durable, and none recorded a position for this file:
		// this flow never wrote it.
		f.Close()
		return nil, fmt.Errorf("output %s is not empty and this flow never wrote it (it resumes at epoch %d with no position for this file): remove it, choose another output, or allow overwriting it (flowrun --overwrite)", s.Path, core.RunInfoFrom(ctx).StartEpoch)
	default:
		f.Close()
		return nil, fmt.Errorf("output %s already exists and is not empty: remove it, choose another output, or allow overwriting it (flowrun --overwrite)", s.Path)
	}
	if err := f.Truncate(off); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return &fileSinkPart{f: f, w: bufio.NewWriterSize(f, 256<<10), path: path, pos: off, sorted: s.Sorted}, nil
}

// checkResume returns why the sink must not resume at pos in f (at path,
// size bytes long), or nil. It only reads f.
func (s Sink) checkResume(f io.ReaderAt, size int64, path string, pos position) error {
	if size < pos.Offset {
		return fmt.Errorf("output %s has %d bytes but %d were already written%s: it was truncated or replaced; restore it or write to a file of another name", s.Path, size, pos.Offset, pos.elsewhere(path))
	}
	switch {
	case !pos.checked():
		// A bare offset from an earlier version: nothing to check it with.
		return nil
	case pos.Offset == 0:
		// No bytes to compare: only at the path the flow writes may a
		// non-empty file be its uncommitted output, to discard.
		if size == 0 || path == pos.Path {
			return nil
		}
		return otherFile("output %s is not empty, and this flow had written nothing to %s when it last committed, so nothing shows this file is its own; it was left untouched: empty or remove it if it holds only this flow's uncommitted output, or write to a file of another name", s.Path, pos.Path)
	}
	ok, err := pos.matches(f)
	if err != nil {
		return fmt.Errorf("output %s: check it is the file this flow wrote: %w", s.Path, err)
	}
	if !ok {
		return otherFile("output %s is not the file this flow wrote, so it was left untouched: its first %d bytes differ from those the flow wrote to %s; resume with that file (or a copy of it) as the output, or write to a file of another name", s.Path, pos.Offset, pos.Path)
	}
	return nil
}

type fileSinkPart struct {
	f      *os.File
	w      *bufio.Writer
	path   string // absolute
	pos    int64
	sorted bool
	epoch  []string
}

// Write implements core.SinkPartition: lines go to the file's buffer (or,
// with Sorted, are held until Commit).
func (p *fileSinkPart) Write(_ context.Context, items []string) error {
	if p.sorted {
		p.epoch = append(p.epoch, items...)
		return nil
	}
	p.write(items)
	return nil
}

func (p *fileSinkPart) write(items []string) {
	for _, it := range items {
		n, _ := p.w.WriteString(it)
		p.w.WriteByte('\n')
		p.pos += int64(n) + 1
	}
}

// Commit implements core.SinkPartition: flush, fsync, and the position
// after the epoch's lines.
func (p *fileSinkPart) Commit(context.Context, core.Epoch) ([]byte, error) {
	if p.sorted && len(p.epoch) > 0 {
		sort.Strings(p.epoch)
		p.write(p.epoch)
		clear(p.epoch)
		p.epoch = p.epoch[:0]
	}
	if err := p.w.Flush(); err != nil {
		return nil, err
	}
	if err := p.f.Sync(); err != nil {
		return nil, err
	}
	pos, err := takePosition(p.f, p.path, p.pos)
	if err != nil {
		return nil, fmt.Errorf("output %s: %w", p.path, err)
	}
	return pos.encode(), nil
}

// Flush implements core.Flusher: the lines written so far reach the file
// (a resume truncates what no epoch committed). With Sorted it does nothing:
// an epoch's lines wait for Commit.
func (p *fileSinkPart) Flush(context.Context) error {
	if p.sorted {
		return nil
	}
	return p.w.Flush()
}

// Close implements core.SinkPartition.
func (p *fileSinkPart) Close(context.Context) error {
	if err := p.w.Flush(); err != nil {
		p.f.Close()
		return err
	}
	return p.f.Close()
}

var _ core.Flusher = (*fileSinkPart)(nil)
