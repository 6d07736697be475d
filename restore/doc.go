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
// next restore into the directory.
package restore
