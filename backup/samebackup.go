package backup

import (
	"bytes"
	"encoding/json"
)

// A restore may read copies of one flow's backups in several locations
// (flowbackup copy copies manifests, chunks and registry events as
// stored). These say when two manifests are one backup and combine what
// two registries believe.

// SameBackup says whether m and o are one backup stored twice: the same
// flow, partition and id, and the same content (the sha256 their stored
// forms seal, or for the oldest, unsealed manifests, equal fields).
func SameBackup(m, o *Manifest) bool {
	if m.Flow.UID != o.Flow.UID || m.Partition != o.Partition || m.ID != o.ID {
		return false
	}
	if m.digest != "" || o.digest != "" {
		return m.digest == o.digest
	}
	a, errA := json.Marshal(m)
	b, errB := json.Marshal(o)
	return errA == nil && errB == nil && bytes.Equal(a, b)
}

// Merge adds every event o believes to r (nil o: none). Each location's
// registry is read under that location's policy; merged, restore prefers
// lineages by every claim any location believes.
func (r *Registry) Merge(o *Registry) {
	if o == nil {
		return
	}
	for id, kinds := range o.events {
		for kind, at := range kinds {
			r.add(id, kind, at)
		}
	}
}
