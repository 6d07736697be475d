// Package restore plans and performs restores of backed-up recovery
// partitions: it picks the latest epoch every partition's backups overlap
// on, fetches and verifies the chosen images, lays them into a directory,
// and trims them to that epoch so the next run resumes exactly there; and it
// verifies buckets. It never writes outside the target directory, whatever a
// manifest says, and never leaves a half-restored partition behind.
package restore
