package backup

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// filePageReader streams a partition's pages, in page order, as of the
// read transaction open on conn, as pageReader does, but reads from the
// database file itself every page that no frame of the WAL names, and only
// the others through SQLite (sqlite_dbpage). That is the same content:
//
//   - The transaction's snapshot is the database file overlaid with WAL
//     frames up to its end mark. A page no frame names at the time the WAL
//     is scanned (after the snapshot began) had no frame in the snapshot.
//   - While the transaction holds its read lock, a checkpoint copies into
//     the database file only frames within the snapshot (a reader of the
//     WAL pins its mark; one that reads the file alone holds read lock 0,
//     which every backfill must take exclusively), so a page with no frame
//     in the snapshot does not change in the file until it ends. Frames
//     appended after the scan are past the snapshot.
//
// Reading through SQLite costs three copies and a VM step per page, a
// fifth of a first backup's CPU; reading the file costs one.
type filePageReader struct {
	ctx      context.Context
	conn     *sql.Conn
	db       *os.File
	pageSize int
	count    int64          // pages in the snapshot
	viaSQL   map[int64]bool // pages some WAL frame names, or past the file's end, or the lock-byte page
	next     int64          // the next page to read (1-based)
	cur      []byte
	buf      []byte
}

// newFilePageReader opens path (the partition's database file) for the
// snapshot of the read transaction on conn, whose page size and count are
// given. It returns nil, nil where the file cannot be read so (no such
// file, another page size in the WAL): the caller reads through SQLite.
func newFilePageReader(ctx context.Context, conn *sql.Conn, path string, pageSize int, count int64) (*filePageReader, error) {
	db, err := os.Open(path)
	if err != nil {
		return nil, nil
	}
	fi, err := db.Stat()
	if err != nil || !sqliteHasFile(path, fi, db) {
		db.Close()
		return nil, nil
	}
	via, ok, err := walPages(path+"-wal", pageSize)
	if err != nil || !ok {
		db.Close()
		return nil, err
	}
	filePages := fi.Size() / int64(pageSize)
	for p := filePages + 1; p <= count; p++ {
		via[p] = true
	}
	// SQLite never writes the page holding the lock bytes (at 1 GiB).
	via[int64(0x40000000/pageSize)+1] = true
	return &filePageReader{ctx: ctx, conn: conn, db: db, pageSize: pageSize, count: count, viaSQL: via, next: 1, buf: make([]byte, 256*pageSize)}, nil
}

// sqliteHasFile says whether every descriptor this process holds on path
// (SQLite's) is of the file fi describes: a file renamed over the path
// since SQLite opened it is not the one the transaction reads. Where the
// descriptors cannot be listed (no /proc), it says no.
func sqliteHasFile(path string, fi os.FileInfo, own *os.File) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return false
	}
	ownFD := strconv.Itoa(int(own.Fd()))
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return false
	}
	found := false
	for _, fd := range fds {
		if fd.Name() == ownFD {
			continue
		}
		link, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err != nil || (link != abs && link != abs+" (deleted)") {
			continue
		}
		other, err := os.Stat("/proc/self/fd/" + fd.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if !os.SameFile(fi, other) {
			return false
		}
		found = true
	}
	return found
}

// walPages returns the page numbers that any frame of the WAL at path
// names (all of the file, valid frames or not: more than needed is
// harmless). ok is false for a WAL of another page size.
func walPages(path string, pageSize int) (map[int64]bool, bool, error) {
	pages := map[int64]bool{}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return pages, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read the WAL: %w", err)
	}
	defer f.Close()
	var hdr [32]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return pages, true, nil // empty, or shorter than a header: no frame
	}
	if ps := int(binary.BigEndian.Uint32(hdr[8:])); ps != pageSize && !(ps == 1 && pageSize == 65536) {
		return nil, false, nil
	}
	var fh [24]byte
	for off := int64(32); ; off += int64(24 + pageSize) {
		if _, err := f.ReadAt(fh[:], off); err != nil {
			if errors.Is(err, io.EOF) {
				return pages, true, nil
			}
			return nil, false, fmt.Errorf("read the WAL: %w", err)
		}
		if p := binary.BigEndian.Uint32(fh[:4]); p != 0 {
			pages[int64(p)] = true
		}
	}
}

func (r *filePageReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if len(r.cur) == 0 && len(b)-n >= r.pageSize {
			// Whole pages from the file go straight into b.
			k, err := r.readFile(b[n:])
			if err != nil {
				return n, err
			}
			if k > 0 {
				n += k
				continue
			}
		}
		if len(r.cur) == 0 {
			if err := r.fill(); err != nil {
				if n > 0 && errors.Is(err, io.EOF) {
					return n, nil
				}
				return n, err
			}
		}
		k := copy(b[n:], r.cur)
		r.cur = r.cur[k:]
		n += k
	}
	return n, nil
}

// readFile reads into b the run of pages from the file that starts at the
// next page (as many as fit), or nothing if the next page is read through
// SQLite or there is none.
func (r *filePageReader) readFile(b []byte) (int, error) {
	n := int64(0)
	for max := int64(len(b) / r.pageSize); n < max && r.next+n <= r.count && !r.viaSQL[r.next+n]; n++ {
	}
	if n == 0 {
		return 0, nil
	}
	k := int(n) * r.pageSize
	if _, err := r.db.ReadAt(b[:k], (r.next-1)*int64(r.pageSize)); err != nil {
		return 0, fmt.Errorf("read pages %d-%d: %w", r.next, r.next+n-1, err)
	}
	r.next += n
	return k, nil
}

// fill reads the next run of pages: those from the file in one read, up to
// the buffer's size, or one page through SQLite.
func (r *filePageReader) fill() error {
	if r.next > r.count {
		return io.EOF
	}
	if r.viaSQL[r.next] {
		var page []byte
		if err := r.conn.QueryRowContext(r.ctx, `SELECT data FROM sqlite_dbpage WHERE pgno = ?`, r.next).Scan(&page); err != nil {
			return fmt.Errorf("read page %d: %w", r.next, err)
		}
		if len(page) != r.pageSize {
			return fmt.Errorf("read page %d: %d bytes, want %d", r.next, len(page), r.pageSize)
		}
		r.cur = page
		r.next++
		return nil
	}
	k, err := r.readFile(r.buf)
	r.cur = r.buf[:k]
	return err
}

func (r *filePageReader) Close() error { return r.db.Close() }
