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

// PrefixedKey checks key and joins it to a store's prefix (which may be
// empty): the object name a backend uses for key.
func PrefixedKey(prefix, key string) (string, error) {
	if err := CheckKey(key); err != nil {
		return "", err
	}
	if prefix == "" {
		return key, nil
	}
	return prefix + "/" + key, nil
}

// StoreURL names a bucket store for messages: "s3://bucket/prefix".
func StoreURL(scheme, bucket, prefix string) string {
	if prefix == "" {
		return scheme + "://" + bucket
	}
	return scheme + "://" + bucket + "/" + prefix
}
