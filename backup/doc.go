// Package backup ships consistent copies of recovery partitions to object
// storage and reads them back. It must never make a partial backup visible,
// and never upload a chunk it knows is already there.
//
// # Object layout (the same on every backend)
//
// Keys are relative to the store's root (a URL's bucket and prefix):
//
//	chunks/<h[0:2]>/<h>                        zstd-compressed chunk; h = hex sha256 of the uncompressed bytes
//	manifests/<flow-uid>/part-<iiii>/<id>.json one backup of one partition; written after all its chunks
//	latest/<flow-uid>/part-<iiii>.json         copy of that partition's newest manifest (saves a LIST)
//	locks/<flow-uid>/part-<iiii>.json          backup lock, created only if absent; renewed and taken
//	                                           over by conditional writes; expires by itself
//	locks/prune.json                           prune lock: no backup starts while it is held, and prune
//	                                           does not start while a backup lock is
//	quarantine/<h>.json                        chunk h was found damaged in the store by verify --deep
//	config.json                                written by the first encrypted backup: the location is encrypted (see CheckScheme)
//	lineages/<flow-uid>/<lineage>/<event>-<time>-<rand>.json
//	                                           the lineage registry: claim, fenced, retired (see lineage.go)
//
// <iiii> is the partition index in four or more decimal digits; <id> is the
// backup's UTC time, "20060102T150405.000Z", a dash and 8 random hex digits,
// so manifests list in time order. A bucket copied between clouds restores.
//
// # A backup of one partition
//
// A backup is a base image plus, optionally, a delta, captured under one read
// transaction each (never by copying the db, -wal and -shm files):
//
//   - the base is the partition's pages read through SQLite (sqlite_dbpage),
//     WAL content included, cut into 32 MiB chunks, each stored as 4 MiB
//     zstd frames end to end and named by its whole content (see Object);
//     unchanged chunks dedupe;
//   - a delta is a small SQLite file holding every snapshot row with epoch at
//     or after the base's watermark W, the keys whose tombstones GC dropped at
//     or after W (restored as tombstones), and the partition's small tables
//     (parts, meta, executions, fronts, epoch_times; the changelog is rebuilt
//     on restore). Rows below W never
//     change after the base except by GC, which only removes rows older than
//     a key's surviving newest one, so base rows below W plus the delta give
//     the same state for every epoch in the backup's restorable range. A new
//     base is taken when the delta would exceed half the base, when the base
//     is older than BaseMaxAge, or when the partition's execution history no
//     longer extends the base's.
//
// The manifest (JSON, see Manifest) is written last and names the flow (uid,
// name), the partition (index, count), the partition's lineage (its history,
// with ancestors and fork epochs; absent before lineages, meaning the root), every object with its sha256, size and
// stored size, the restorable epoch range [lo, hi] with wall times (lo is the
// partition's commit epoch, hi its frontier), the flow's -s and -b, the agent
// version and host. It is sealed: stored as {"format", "sha256",
// "manifest"}, the sha256 covering the manifest's compact JSON.
//
// # Encryption
//
// With age recipients (Options.Recipients) every chunk and manifest is
// encrypted (see Cipher): a chunk is age(name || zstd), its name h the
// HMAC-SHA256 of its content under the chunk key; a manifest is
// {"format": ManifestFormatAge, "sha256", "index", "sealed"}, the index
// plaintext (ids, epochs, chunk names and stored sizes: what quick verify,
// list and prune read), the sealed manifest and the chunk key age-encrypted
// to the recipients and to the chunk key. Locks and quarantine markers
// carry no state and stay plaintext.
//
// # Object lock
//
// With Options.ObjectLock (backup --object-lock) chunks, manifests and the
// lineage registry events a backup writes are locked (Retainer: S3 Object
// Lock, GCS object retention) until the backup's start plus the period;
// reused chunks have their locks extended; prune keeps and reports locked
// objects; latest pointers, heartbeats, locks, quarantine markers and
// config.json stay unlocked (see objectlock.go).
//
// # Integrity rules
//
//   - A manifest never names an object it has not confirmed is stored: chunks
//     uploaded by this backup, or chunks of the previous backup whose
//     presence and stored size a Stat (HEAD) confirmed just before. A delta
//     is only taken over a base whose every chunk is so confirmed; otherwise
//     the backup takes a new base and uploads what is missing.
//   - Bit rot is found by verify --deep (two reads of a chunk returning the
//     same bytes that do not match its sha256), which writes a quarantine
//     marker; the next backup treats a quarantined chunk as not stored,
//     uploads its content again if the partition still holds it (or takes a
//     new base), and removes the marker. Damaged objects are never deleted
//     by verify.
//   - Reads that fail to parse or to match a checksum are read again (twice)
//     before an object is called corrupt: damage in transit is not damage in
//     the store.
//   - Backups are combined only along one history: two partitions' backups
//     restore epoch E together only if their lineages agree up to E; a
//     delta never extends a base of another lineage beyond where the two
//     parted; a backup whose lineage is older than the newest claim in the
//     registry is fenced (ErrFenced) unless it takes over.
//   - Prune runs under the prune lock and deletes nothing unless it read
//     every manifest and latest pointer; its chunk grace period is at least
//     the lock TTL. Locks are renewed every third of their TTL; work under a
//     lock that is lost (taken over, or not renewed in time) is cancelled.
//   - Every lock write is a conditional write on the lock's current version
//     (Store.PutIfMatch: S3 If-Match on the ETag or If-None-Match, GCS
//     generation preconditions, a locked rename or link on files): a lock
//     is created only if absent, taken over (expired, long unreadable, or a
//     dead local process's) only from exactly the version that was read, and
//     renewed only from the holder's own last write. A lock is deleted to
//     be taken over only when no version of it can be read (an object too
//     large to be a lock, or a store that calls it present and missing at
//     once). Of agents racing for one expired lock exactly one wins; a
//     renewal that meets a change reads the lock and is lost (ErrLockLost)
//     unless the change is its holder's own write whose answer was lost
//     (same holder and acquisition time): a retry never turns its own
//     success into a loss.
//   - A lock body carries a checksum of its fields, and one that does not
//     match is read again as above: a bit flipped in transit never reads as
//     another holder, or as an expired lock to take over.
//   - Listings stream: no backend, and no caller, holds a whole listing.
package backup
