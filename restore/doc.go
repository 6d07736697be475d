// Package restore plans and performs restores of backed-up recovery
// partitions: it picks the latest epoch every partition's backups overlap
// on, fetches and verifies the chosen images, lays them into a directory,
// and trims them to that epoch so the next run resumes exactly there; and it
// verifies buckets. It never writes outside the target directory, whatever a
// manifest says, and never leaves a half-restored partition behind: the
// partitions take their names all together or not at all.
//
// A restore often runs as root into a directory the service user owns, who
// can change any name in it at any moment. So a restore opens the directory
// once and works through that descriptor; it writes its temporary files in
// a private directory it makes inside (.flowkeep-restore-*, mode 0700),
// each one new (O_EXCL, never through a symlink); it sets mode and owner
// through each file's descriptor before renaming it into the directory; and
// it never follows a symlink there. A killed restore's private directory,
// and anything at the temporary names of older versions, is removed by the
// next restore into the directory, which first rolls back the renames the
// killed one made into the directory (see publishLog).
//
// SQLite opens files by name and follows symlinks. Where another user can
// change what the private directory's path leads to (its directory, or one
// above, belongs to that user or is writable by them: see safePath), the
// restore does its SQLite work (laying deltas, checking images, trimming)
// in a scratch directory of its own under Options.TempDir (default
// os.TempDir(); one other users can change is refused), whose files no one
// else can reach, and copies each finished file into the private
// directory through descriptors before it seals and publishes it as above.
// That costs a copy of each image and room for it there; a restore into
// one's own directory needs neither. A killed restore's scratch directory
// (flowkeep-restore-PID-*) is removed by the next restore that needs one.
package restore
