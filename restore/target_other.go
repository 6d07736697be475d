//go:build !unix

package restore

import (
	"os"
	"path/filepath"
)

// renameDirs renames from in fromDir to to in toDir (by path here).
func renameDirs(fromDir *os.File, from string, toDir *os.File, to string) error {
	return os.Rename(filepath.Join(fromDir.Name(), from), filepath.Join(toDir.Name(), to))
}

// ownedByUs cannot tell here: files have no Unix owner.
func ownedByUs(os.FileInfo) bool { return true }

// safePath cannot tell here (no Unix owners): a path counts as safe, and
// restores work as they always did.
func safePath(string) error { return nil }

// fdPath: there is no name for an open file here.
func fdPath(*os.File) string { return "" }

// sameDevice cannot tell here; it says yes, which counts space twice.
func sameDevice(a, b *os.File) bool { return true }

// walkDir makes dir (with create) and opens it, resolving its symlinks.
func walkDir(dir string, create bool) (*os.File, string, error) {
	if create {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, "", err
		}
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, "", err
	}
	f, err := os.Open(resolved)
	return f, resolved, err
}

// ProbeWritable says whether this process can make entries in dir.
func ProbeWritable(dir string) error {
	probe, err := os.MkdirTemp(dir, ".flowkeep-probe-")
	if err != nil {
		return err
	}
	return os.Remove(probe)
}
