package flowbackup

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

// objectLockHelp explains --object-lock to backup and agent users.
const objectLockHelp = `--object-lock MODE:DURATION (GOVERNANCE or COMPLIANCE, e.g. GOVERNANCE:30d)
locks every chunk, manifest and lineage registry event the backup writes until
DURATION after the backup's start (S3 Object Lock; GCS object retention):
nobody, the agent's own credentials included, can delete or replace them
before then. Chunks a later backup reuses have their locks extended, so every
object of a locked backup stays locked as long as the backup is; an idle
flow's newest backup is taken again before its lock runs low. Latest
pointers, locks, heartbeats and quarantine markers are not locked (they are
rewritten and deleted in normal work, and no restore needs them). The bucket
must have been created with Object Lock (S3) or object retention (GCS)
enabled; file:// cannot lock files (exit 3). Prune (under another identity)
keeps locked backups and deletes them once their locks end; see
flowbackup undelete for what a DELETE does to a locked S3 object.`

func addObjectLockFlag(f *pflag.FlagSet, v *string) {
	f.StringVar(v, "object-lock", "", "lock what each backup writes: MODE:DURATION, GOVERNANCE or COMPLIANCE, e.g. GOVERNANCE:30d (S3 Object Lock, GCS object retention)")
}

// objectLock parses --object-lock ("" is none).
func objectLock(s string) (*backup.ObjectLock, error) {
	if s == "" {
		return nil, nil
	}
	l, err := backup.ParseObjectLock(s)
	if err != nil {
		return nil, usagef("--object-lock: %v", err)
	}
	return &l, nil
}

// checkObjectLock refuses --object-lock on a store that cannot lock
// objects (file://), before anything is written.
func checkObjectLock(l *backup.ObjectLock, s backup.Store) error {
	if l != nil && backup.RetainerOf(s) == nil {
		return usagef("--object-lock: %s cannot lock objects (file:// has no object lock); back up to an s3:// bucket created with Object Lock enabled, or a gs:// bucket with object retention enabled", s)
	}
	return nil
}

// printLocked says what prune kept because it is locked.
func printLocked(out io.Writer, res *backup.PruneResult) {
	for _, k := range res.LockedManifests {
		fmt.Fprintf(out, "kept %s: under object lock\n", k)
	}
	if res.LockedObjects > 0 {
		fmt.Fprintf(out, "kept %s (%s) under object lock until %s at the latest: a prune after their locks end deletes them\n",
			human.Count(res.LockedObjects, "locked object"), human.Bytes(res.LockedBytes), res.LockedUntil.UTC().Format(time.RFC3339))
	}
}
