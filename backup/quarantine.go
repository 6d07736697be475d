package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/flowkeep/flowkeep/internal/machine"
	"strings"
	"time"
)

// QuarantinePrefix holds one marker per chunk that verify --deep found
// damaged in the store (read three times, never matching its sha256). The
// chunk itself is left in place (damaged objects are never deleted); the
// next backup treats a quarantined chunk as not stored, uploads it again if
// the partition still holds its content (or takes a new base), and then
// removes the marker.
const QuarantinePrefix = "quarantine/"

// QuarantineKey is the marker of chunk h.
func QuarantineKey(h string) string { return QuarantinePrefix + h + ".json" }

type quarantineMarker struct {
	SHA256 string    `json:"sha256"`
	Found  time.Time `json:"found"`
	Host   string    `json:"machine"`
	Reason string    `json:"reason"`
}

// Quarantine marks chunk h as damaged in the store.
func Quarantine(ctx context.Context, s Store, h, reason string, now time.Time) error {
	b, _ := json.Marshal(quarantineMarker{SHA256: h, Found: now.UTC(), Host: machine.ID(), Reason: reason})
	if err := s.Put(ctx, QuarantineKey(h), b); err != nil {
		return fmt.Errorf("quarantine chunk %s: %w", h[:min(12, len(h))], err)
	}
	return nil
}

// LoadQuarantine returns the quarantined chunks (one LIST, of a prefix that
// is empty unless verify found damage).
func LoadQuarantine(ctx context.Context, s Store) (map[string]bool, error) {
	out := map[string]bool{}
	err := s.List(ctx, QuarantinePrefix, "", func(oi ObjectInfo) error {
		h := strings.TrimSuffix(strings.TrimPrefix(oi.Key, QuarantinePrefix), ".json")
		if hexSHA256RE.MatchString(h) {
			out[h] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list quarantined chunks: %w", err)
	}
	return out, nil
}
