package recovery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Partition is one open partition file.
type Partition struct {
	Path    string
	DB      *sql.DB
	Index   PartitionIndex
	Count   PartitionCount
	FlowUID string
}

// open opens a SQLite file whose every connection runs pragmas first;
// single limits it to one connection (every writer: SQLite has one writer
// at a time, and connection-scoped pragmas then hold for all its work).
// txlock, if set, is how transactions begin (immediate: take the write
// lock at BEGIN rather than fail at the first write).
func open(path string, single bool, txlock string, pragmas ...string) (*sql.DB, error) {
	return openMode(path, "", single, txlock, pragmas...)
}

// openMode is open with a SQLite URI mode: "ro" (never writes, so never
// checkpoints a WAL on close), "immutable" (nothing can change the file:
// no locks, no -wal or -shm made), "rw" (read-write, but the file must
// exist: never created), or "" (read-write, created if missing).
func openMode(path, mode string, single bool, txlock string, pragmas ...string) (*sql.DB, error) {
	q := url.Values{}
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	if txlock != "" {
		q.Add("_txlock", txlock)
	}
	switch mode {
	case "ro", "rw":
		q.Add("mode", mode)
	case "immutable":
		q.Add("mode", "ro")
		q.Add("immutable", "1")
	}
	db, err := sql.Open("sqlite", fileURI(path)+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	if single {
		db.SetMaxOpenConns(1)
	}
	return db, nil
}

// fileURI is path as a SQLite URI filename: '?', '#' and '%' in a path
// would otherwise end it (and create a file elsewhere).
func fileURI(path string) string {
	return "file:" + (&url.URL{Path: path}).EscapedPath()
}

// OpenDB opens a SQLite file with the settings partitions use. readOnly
// connections never write (mode=ro, query_only) and so never disturb a
// running flow.
func OpenDB(path string, readOnly bool) (*sql.DB, error) {
	if readOnly {
		// mode=ro: a read-only connection never checkpoints the WAL when
		// it closes, so reading a crashed flow's partitions changes nothing.
		return openMode(path, "ro", false, "", "busy_timeout(20000)", "query_only(1)")
	}
	return openWriter(path, "")
}

// openWriter opens a partition for writing, with mode "" or "rw".
func openWriter(path, mode string) (*sql.DB, error) {
	return openMode(path, mode, true, "immediate", "busy_timeout(20000)", "journal_mode(WAL)", "synchronous(FULL)", "cache_size(-1024)")
}

// OpenImageDB is OpenDB(path, false) for a file that must exist (a
// restore's image): it never creates one. SQLite opens files by name; if
// the name no longer leads to the image, opening it fails instead of making
// an empty database wherever it leads.
func OpenImageDB(path string) (*sql.DB, error) {
	return openWriter(path, "rw")
}

// OpenScratchDB opens a partition image that nothing else can see yet (a
// restore's temporary file) for one bulk change: exclusive, no journal, no
// syncs. Its page cache is SQLite's default size (2 MiB): laying deltas over
// images, 128 MiB per image (restores lay several at once) took a restore
// to 635-660 MiB peak RSS, and 32 and 8 MiB were slower than 2 MiB too
// (farm-bench over 4 partitions with 9 deltas: 2 MiB 215 MiB and 2.8 s, 8
// MiB 262 MiB and 3.4 s, 32 MiB 445 MiB and 4.2 s, 128 MiB 635 MiB and 5.5
// s). A failure part-way leaves the file unusable, so callers discard it;
// on success they call CloseScratchDB and then fsync the file. Like
// OpenImageDB, it never creates the file.
//
// An image in WAL mode (every partition's, and so every image's) is first
// marked a rollback-journal database in its header (CloseScratchDB marks
// it WAL again): SQLite then opens no WAL to leave WAL mode, which took
// 140-190 ms of each open (SQLite waiting in its WAL read loop), against
// under a millisecond. A WAL file with frames beside it is still read
// (SQLite opens one it finds whatever the header says).
func OpenScratchDB(path string) (*sql.DB, error) {
	if err := leaveWAL(path); err != nil {
		return nil, err
	}
	return openMode(path, "rw", true, "", "locking_mode(EXCLUSIVE)", "journal_mode(OFF)", "synchronous(OFF)", "cache_size(-2048)")
}

// leaveWAL marks the SQLite file at path a rollback-journal database
// (header bytes 18 and 19, the file format's write and read versions: 2
// is WAL, 1 legacy) if it is a WAL one.
func leaveWAL(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var h [20]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil // not a database SQLite can open: it says so
	}
	if string(h[:16]) != "SQLite format 3\x00" || h[18] != 2 || h[19] != 2 {
		return nil
	}
	if _, err := f.WriteAt([]byte{1, 1}, 18); err != nil {
		return fmt.Errorf("leave WAL mode: %w", err)
	}
	return nil
}

// CloseScratchDB returns a scratch image to the WAL mode partitions use
// and closes it.
func CloseScratchDB(ctx context.Context, db *sql.DB) error {
	_, err := db.ExecContext(ctx, `PRAGMA journal_mode=WAL`)
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}

// OpenPartition opens path and reads its identity. It returns (nil, nil) if
// the file is a SQLite database without a parts row (not a partition).
func OpenPartition(ctx context.Context, path string, readOnly bool) (*Partition, error) {
	mode := ""
	if readOnly {
		mode = "ro"
	}
	return openPartition(ctx, path, mode)
}

// openPartition is OpenPartition with an open mode (see openMode); a
// writable partition is migrated to the current schema.
func openPartition(ctx context.Context, path, mode string) (*Partition, error) {
	if mode == "" {
		// Look before writing: a writable open switches the file to WAL
		// and migrates it, so a file that is not a partition (another
		// program's database) or whose identity is refused is only read.
		p, err := openPartition(ctx, path, "ro")
		if p == nil || err != nil {
			return p, err
		}
		v, err := SchemaOf(ctx, p.DB)
		p.Close()
		if err == nil {
			err = notNewer(v)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	readOnly := mode != ""
	var db *sql.DB
	var err error
	switch mode {
	case "", "ro":
		db, err = OpenDB(path, readOnly)
	default:
		db, err = openMode(path, mode, false, "", "query_only(1)")
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	p := &Partition{Path: path, DB: db}
	var n int
	err = db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type='table' AND name='parts'`).Scan(&n)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, corruptUnlessDisk(err))
	}
	if n == 0 {
		db.Close()
		return nil, nil
	}
	err = db.QueryRowContext(ctx, `SELECT part_index, part_count, flow_uid FROM parts`).Scan(&p.Index, &p.Count, &p.FlowUID)
	if errors.Is(err, sql.ErrNoRows) {
		db.Close()
		return nil, nil
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("read identity of %s: %w", path, corruptUnlessDisk(err))
	}
	if p.Count < 1 || p.Index < 0 || int(p.Index) >= int(p.Count) {
		db.Close()
		return nil, fmt.Errorf("%s claims to be partition %d of %d: %w", path, p.Index, p.Count, ErrCorrupt)
	}
	if !readOnly {
		if err := migrate(ctx, db); err != nil {
			db.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return p, nil
}

// Close closes the partition's database.
func (p *Partition) Close() error { return p.DB.Close() }

// candidates lists the files in dir that may be partitions.
func candidates(dir string) ([]string, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("recovery directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("recovery directory %s is not a directory", dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("recovery directory: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".sqlite3") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// Discover opens every partition in dir (found by content) and checks that
// they form one complete flow: same count, same flow uid, every index once.
// want, if non-empty, is the flow name the caller runs; partitions that
// recorded another name are refused.
func Discover(ctx context.Context, dir string, readOnly bool, want string) ([]*Partition, error) {
	return DiscoverDirs(ctx, []string{dir}, readOnly, want)
}

// DiscoverDirs is Discover over several directories (partitions laid onto
// several disks or restored onto several machines' directories).
func DiscoverDirs(ctx context.Context, dirs []string, readOnly bool, want string) ([]*Partition, error) {
	var ps []*Partition
	for _, dir := range dirs {
		more, err := discoverAny(ctx, dir, readOnly)
		if err != nil {
			closeAll(ps)
			return nil, err
		}
		ps = append(ps, more...)
	}
	dir := strings.Join(dirs, ", ")
	if err := checkSet(ctx, dir, ps, want); err != nil {
		closeAll(ps)
		return nil, err
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Index < ps[j].Index })
	return ps, nil
}

// discoverAny opens every partition in dir without checking the set.
func discoverAny(ctx context.Context, dir string, readOnly bool) ([]*Partition, error) {
	files, err := candidates(dir)
	if err != nil {
		return nil, err
	}
	var ps []*Partition
	for _, f := range files {
		p, err := OpenPartition(ctx, f, readOnly)
		if err != nil {
			closeAll(ps)
			return nil, err
		}
		if p != nil {
			ps = append(ps, p)
		}
	}
	return ps, nil
}

func closeAll(ps []*Partition) {
	for _, p := range ps {
		p.Close()
	}
}

// CheckSet validates partitions as one complete flow (see Discover).
func checkSet(ctx context.Context, dir string, ps []*Partition, want string) error {
	if len(ps) == 0 {
		return fmt.Errorf("%w in %s: create them with `flowrun recovery init %s N` (or `flowrun run … --init-partitions N`), or restore a backup into it", ErrNoPartitions, dir, dir)
	}
	count := ps[0].Count
	uid := ps[0].FlowUID
	have := map[PartitionIndex]string{}
	for _, p := range ps {
		if p.Count != count {
			return fmt.Errorf("%w in %s: %s is partition %d of %d but %s is partition %d of %d; the partition count is fixed for the life of a flow: move the strays out",
				ErrMixedPartitions, dir, filepath.Base(ps[0].Path), ps[0].Index, count, filepath.Base(p.Path), p.Index, p.Count)
		}
		if p.FlowUID != uid {
			return fmt.Errorf("%w in %s: %s belongs to flow %s but %s to flow %s; keep one flow's partitions per directory",
				ErrForeignFlow, dir, filepath.Base(ps[0].Path), uid, filepath.Base(p.Path), p.FlowUID)
		}
		if other, dup := have[p.Index]; dup {
			return fmt.Errorf("%w in %s: partition %d is both %s and %s; remove one", ErrMixedPartitions, dir, p.Index, filepath.Base(other), filepath.Base(p.Path))
		}
		have[p.Index] = p.Path
	}
	var missing []string
	for i := PartitionIndex(0); int(i) < int(count); i++ {
		if _, ok := have[i]; !ok {
			missing = append(missing, strconv.Itoa(int(i)))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: partitions %s of %d are not in %s; copy them back or restore them from a backup",
			ErrMissingPartitions, strings.Join(missing, ", "), count, dir)
	}
	if want != "" {
		for _, p := range ps {
			name, err := metaValue(ctx, p.DB, "flow_name")
			if err != nil {
				return fmt.Errorf("read flow name of %s: %w", p.Path, err)
			}
			if name != "" && name != want {
				return fmt.Errorf("%w: the partitions in %s belong to flow %q, not %q; use another recovery directory", ErrForeignFlow, dir, name, want)
			}
		}
	}
	return nil
}

type queryer interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

func metaValue(ctx context.Context, q queryer, key string) (string, error) {
	var v string
	err := q.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

func metaEpoch(ctx context.Context, q queryer, key string) (Epoch, error) {
	v, err := metaValue(ctx, q, key)
	if err != nil || v == "" {
		return 0, err
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("meta %s = %q: %w", key, v, ErrCorrupt)
	}
	return Epoch(n), nil
}

func unixMs(t time.Time) int64 { return t.UnixMilli() }

// Find opens every partition in dir (found by content) without checking that
// they form a complete set: a machine of a cluster may hold only some.
// It refuses partitions of different flows in one directory.
func Find(ctx context.Context, dir string, readOnly bool) ([]*Partition, error) {
	ps, err := discoverAny(ctx, dir, readOnly)
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		if p.FlowUID != ps[0].FlowUID {
			closeAll(ps)
			return nil, fmt.Errorf("%w in %s: %s belongs to flow %s but %s to flow %s; keep one flow's partitions per directory",
				ErrForeignFlow, dir, ps[0].Path, ps[0].FlowUID, p.Path, p.FlowUID)
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Index < ps[j].Index })
	return ps, nil
}

// FindDirs is Find over several directories; a partition found in two of
// them is an error.
func FindDirs(ctx context.Context, dirs []string, readOnly bool) ([]*Partition, error) {
	var ps []*Partition
	for _, d := range dirs {
		more, err := Find(ctx, d, readOnly)
		if err != nil {
			closeAll(ps)
			return nil, err
		}
		ps = append(ps, more...)
	}
	seen := map[PartitionIndex]string{}
	for _, p := range ps {
		if p.FlowUID != ps[0].FlowUID {
			closeAll(ps)
			return nil, fmt.Errorf("%w: %s belongs to flow %s but %s to flow %s", ErrForeignFlow, ps[0].Path, ps[0].FlowUID, p.Path, p.FlowUID)
		}
		if other, dup := seen[p.Index]; dup {
			closeAll(ps)
			return nil, fmt.Errorf("%w: partition %d is both %s and %s; remove one", ErrMixedPartitions, p.Index, other, p.Path)
		}
		seen[p.Index] = p.Path
	}
	return ps, nil
}

// CloseAll closes every partition.
func CloseAll(ps []*Partition) { closeAll(ps) }
