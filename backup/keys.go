package backup

import (
	"fmt"
	"strings"
)

// CheckKey rejects keys a backend must never be asked to handle: empty,
// absolute, with empty, "." or ".." segments, or with a backslash or NUL.
func CheckKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.ContainsAny(key, "\\\x00") {
		return fmt.Errorf("invalid object key %q", key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("invalid object key %q", key)
		}
	}
	return nil
}
