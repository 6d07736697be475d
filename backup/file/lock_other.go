//go:build !unix

package file

import (
	"context"
	"sync"
)

// casMu stands in for a file lock where flock is missing: conditional
// writes are atomic among one process's callers only, so two agents must
// not share a file store here.
var casMu sync.Mutex

func lockFile(ctx context.Context, path string) (func(), error) {
	casMu.Lock()
	return casMu.Unlock, nil
}

// openReadFlags open an object for reading.
const openReadFlags = 0
