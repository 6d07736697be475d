// Package diskspace tells how much room a file system has left.
package diskspace

// Free is the space left for an unprivileged writer in dir's file system;
// ok is false if it cannot tell (then assume there is room, and let the
// writes say otherwise).
func Free(dir string) (free uint64, ok bool) { return free0(dir) }
