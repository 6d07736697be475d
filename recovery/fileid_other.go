//go:build !unix

package recovery

import "os"

func statID(os.FileInfo) string { return "" }
