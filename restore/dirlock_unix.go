//go:build unix

package restore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive lock on dir itself for one restore (flock on
// the directory: released by the kernel if the process dies, and no file
// left behind), so a second restore into the same directory is refused
// instead of racing, and files left by an earlier restore are known to be
// stale.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock %s for the restore: %w", dir, err)
	}
	if err := lockOpenDir(f, dir); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// lockOpenDir is lockDir on the open directory f (named dir); closing f
// releases the lock.
func lockOpenDir(f *os.File, dir string) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("another restore into %s is running", dir)
		}
		return fmt.Errorf("lock %s for the restore: %w", dir, err)
	}
	return nil
}
