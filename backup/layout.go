package backup

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Key prefixes of the canonical layout (see the package doc).
const (
	ChunksPrefix    = "chunks/"
	ManifestsPrefix = "manifests/"
	LatestPrefix    = "latest/"
	LocksPrefix     = "locks/"
)

var (
	hexSHA256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	flowUIDRE   = regexp.MustCompile(`^[0-9a-f]{8,64}$`)
	backupIDRE  = regexp.MustCompile(`^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}$`)
)

// ChunkKey is where the chunk with content hash h is stored.
func ChunkKey(h string) string { return ChunksPrefix + h[:2] + "/" + h }

func partDir(uid string, idx int) string { return fmt.Sprintf("%s/part-%04d", uid, idx) }

// ManifestKey is where backup id of partition idx of flow uid is stored.
func ManifestKey(uid string, idx int, id string) string {
	return ManifestsPrefix + partDir(uid, idx) + "/" + id + ".json"
}

// LatestKey holds a copy of the partition's newest manifest.
func LatestKey(uid string, idx int) string { return LatestPrefix + partDir(uid, idx) + ".json" }

// LockKey is the agent lock of a partition.
func LockKey(uid string, idx int) string { return LocksPrefix + partDir(uid, idx) + ".json" }

// ManifestRef is what a manifest's key says about it.
type ManifestRef struct {
	Key     string
	FlowUID string
	Index   int
	ID      string
}

// ParseManifestKey parses a key under ManifestsPrefix; ok is false for
// anything else (stray objects are ignored, never trusted).
func ParseManifestKey(key string) (ManifestRef, bool) {
	rest, ok := strings.CutPrefix(key, ManifestsPrefix)
	if !ok {
		return ManifestRef{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || !flowUIDRE.MatchString(parts[0]) || !strings.HasPrefix(parts[1], "part-") || !strings.HasSuffix(parts[2], ".json") {
		return ManifestRef{}, false
	}
	idx, err := strconv.Atoi(strings.TrimPrefix(parts[1], "part-"))
	if err != nil || idx < 0 || idx > MaxPartitions {
		return ManifestRef{}, false
	}
	id := strings.TrimSuffix(parts[2], ".json")
	if !backupIDRE.MatchString(id) || ManifestKey(parts[0], idx, id) != key {
		return ManifestRef{}, false // not in the canonical form this package writes
	}
	return ManifestRef{Key: key, FlowUID: parts[0], Index: idx, ID: id}, true
}

// NewBackupID returns a sortable, unique backup id for time t.
func NewBackupID(t time.Time) string {
	var r [4]byte
	rand.Read(r[:])
	return t.UTC().Format("20060102T150405.000Z") + "-" + hex.EncodeToString(r[:])
}

// BackupIDTime returns the time a backup id encodes.
func BackupIDTime(id string) (time.Time, error) {
	ts, _, _ := strings.Cut(id, "-")
	return time.Parse("20060102T150405.000Z", ts)
}

// DisplayKey is key as messages show it: as it is when every character
// prints, else quoted (Go syntax), so that an object name someone put in
// the bucket cannot add lines or terminal control sequences to a report.
func DisplayKey(key string) string {
	if !utf8.ValidString(key) || strings.ContainsFunc(key, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return strconv.Quote(key)
	}
	return key
}
