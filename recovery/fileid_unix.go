//go:build unix

package recovery

import (
	"fmt"
	"os"
	"syscall"
)

func statID(st os.FileInfo) string {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("%d:%d", sys.Dev, sys.Ino)
	}
	return ""
}
