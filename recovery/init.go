package recovery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/internal/fsync"
	"github.com/flowkeep/flowkeep/internal/machine"
)

// Init creates n partitions part-0.sqlite3 … in the existing directory dir.
// It refuses a directory that already holds partitions (or files named like
// them). Each file is built under a temporary name and renamed into place
// after an fsync, so a crash never leaves a half-made partition under a
// partition's name.
func Init(ctx context.Context, dir string, n int) error {
	if n < 1 {
		return fmt.Errorf("partition count must be at least 1, got %d", n)
	}
	files, err := candidates(dir)
	if err != nil {
		return err
	}
	for _, f := range files {
		p, err := OpenPartition(ctx, f, true)
		if err != nil {
			return fmt.Errorf("%w: %s is unreadable (%v); move it away first", ErrAlreadyInit, f, err)
		}
		if p != nil {
			p.Close()
			return fmt.Errorf("%w: %s is partition %d of %d; use another directory, or remove the old flow's partitions first", ErrAlreadyInit, f, p.Index, p.Count)
		}
		if strings.HasPrefix(filepath.Base(f), "part-") {
			return fmt.Errorf("%w: %s exists; remove it first", ErrAlreadyInit, f)
		}
	}
	var uid [16]byte
	if _, err := rand.Read(uid[:]); err != nil {
		return err
	}
	now := time.Now()
	for i := 0; i < n; i++ {
		final := filepath.Join(dir, fmt.Sprintf("part-%d.sqlite3", i))
		if err := createPartition(ctx, final, PartitionIndex(i), PartitionCount(n), hex.EncodeToString(uid[:]), now); err != nil {
			return fmt.Errorf("create partition %d: %w", i, err)
		}
	}
	return fsync.Dir(dir)
}

func createPartition(ctx context.Context, final string, idx PartitionIndex, n PartitionCount, uid string, now time.Time) error {
	tmp := final + ".init-tmp"
	os.Remove(tmp)
	db, err := OpenDB(tmp, false)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return err
	}
	root, err := json.Marshal(RootLineage(uid, machine.Host(), now, LineageInit))
	if err != nil {
		db.Close()
		return err
	}
	_, err = db.ExecContext(ctx, `INSERT INTO parts (part_index, part_count, flow_uid, created_unix_ms) VALUES (?, ?, ?, ?)`, idx, n, uid, unixMs(now))
	if err == nil {
		_, err = db.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('commit_epoch', '1'), (?, ?)`, metaLineage, string(root))
	}
	if err != nil {
		db.Close()
		return err
	}
	// Closing the last connection checkpoints and removes the -wal.
	if err := db.Close(); err != nil {
		return err
	}
	if err := fsync.File(tmp); err != nil {
		return err
	}
	if _, err := os.Stat(final); err == nil {
		return fmt.Errorf("%w: %s appeared meanwhile", ErrAlreadyInit, final)
	}
	return os.Rename(tmp, final)
}
