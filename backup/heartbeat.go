package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Heartbeats let the bucket alone tell the RPO of an idle flow. When the
// agent finds a partition unchanged since its latest backup (nothing to
// upload), it records that it checked:
//
//	heartbeats/<flow-uid>/part-<iiii>.json   {backup id, lineage, checked at}
//
// at most once a tick, and only when it wrote nothing else for the
// partition. verify then counts a backup as current until the later of its
// capture and its last heartbeat, so an idle, fully backed-up flow has an
// RPO of at most one tick instead of the age of its last epoch. In a signed
// location heartbeats are signed, and only trusted ones count; in an
// encrypted one they are tagged for the recipients (see IndexAuth), and a
// reader holding their keys counts only tagged ones.

// HeartbeatsPrefix is where heartbeats live.
const HeartbeatsPrefix = "heartbeats/"

// HeartbeatKey is the heartbeat of partition idx of flow uid.
func HeartbeatKey(uid string, idx int) string { return HeartbeatsPrefix + partDir(uid, idx) + ".json" }

// Heartbeat says that partition's backup Backup held everything the
// partition did when it was checked.
type Heartbeat struct {
	Backup  string    `json:"backup"`
	Lineage string    `json:"lineage"`
	Checked time.Time `json:"checked"`
}

type storedHeartbeat struct {
	Heartbeat json.RawMessage `json:"heartbeat"`
	SHA256    string          `json:"sha256"`
	Sig       *Signature      `json:"sig,omitempty"`
	Auth      []string        `json:"auth,omitempty"`
}

// writeHeartbeat records that m is current as of now.
func writeHeartbeat(ctx context.Context, s Store, m *Manifest, k *SigningKey, auth *IndexAuth, now time.Time) error {
	body, _ := json.Marshal(Heartbeat{Backup: m.ID, Lineage: m.LineageOf().ID, Checked: now.UTC()})
	sum := sha256.Sum256(body)
	digest := hex.EncodeToString(sum[:])
	b, _ := json.Marshal(storedHeartbeat{Heartbeat: body, SHA256: digest, Sig: k.sign("heartbeat", digest), Auth: auth.tags("heartbeat", digest)})
	if err := s.Put(ctx, HeartbeatKey(m.Flow.UID, m.Partition.Index), b); err != nil {
		return fmt.Errorf("record that partition %d's backup is current: %w", m.Partition.Index, err)
	}
	return nil
}

// LoadHeartbeats reads flow uid's heartbeats by partition. Those that do
// not parse, that in a signed location (trusted non-nil) are not signed by
// a trusted key, or that a reader of an encrypted location holding keys
// (auth non-nil) finds tagged under none of them, are left out: a
// heartbeat can only make the RPO look better, and anyone who can write to
// the bucket can write one.
func LoadHeartbeats(ctx context.Context, s Store, uid string, trusted *TrustedKeys, auth *IndexAuth) (map[int]Heartbeat, error) {
	out := map[int]Heartbeat{}
	var keys []string
	err := s.List(ctx, HeartbeatsPrefix+uid+"/", "", func(oi ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list heartbeats of flow %s: %w", uid, err)
	}
	for _, key := range keys {
		name := strings.TrimSuffix(strings.TrimPrefix(key, HeartbeatsPrefix+uid+"/part-"), ".json")
		idx, err := strconv.Atoi(name)
		if err != nil || HeartbeatKey(uid, idx) != key {
			continue
		}
		hb, err := readParsed(ctx, s, key, 1<<16, func(b []byte) (Heartbeat, error) {
			var st storedHeartbeat
			var hb Heartbeat
			if err := decodeOne(b, &st); err != nil {
				return hb, fmt.Errorf("%w: %v", ErrCorrupt, err)
			}
			sum := sha256.Sum256(st.Heartbeat)
			if hex.EncodeToString(sum[:]) != st.SHA256 || decodeOne(st.Heartbeat, &hb) != nil {
				return hb, fmt.Errorf("%w: heartbeat does not match its sha256", ErrCorrupt)
			}
			if trusted != nil && !trusted.verify(st.Sig, "heartbeat", st.SHA256) {
				return hb, errUntrusted
			}
			if auth != nil && !auth.verify(st.Auth, "heartbeat", st.SHA256) {
				return hb, errUntrusted
			}
			return hb, nil
		})
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) || errors.Is(err, errUntrusted) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", key, err)
		}
		out[idx] = hb
	}
	return out, nil
}

var errUntrusted = errors.New("not signed by a trusted key, or not tagged for the keys given")
