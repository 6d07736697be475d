package backup

import (
	"errors"
	"fmt"
	"strings"
)

var errBadKey = errors.New("invalid object key")

// CheckKey rejects keys a backend must never be asked to handle: empty,
// absolute, with empty, "." or ".." segments, or with a backslash or NUL.
func CheckKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.ContainsAny(key, "\\\x00") {
		return fmt.Errorf("%w %q", errBadKey, key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w %q", errBadKey, key)
		}
	}
	return nil
}
