package backup

import (
	"sort"
	"time"

	"github.com/flowkeep/flowkeep/recovery"
)

// Helpers for restores to a point in time: the restorable epochs of one
// history, bounded, and what the manifests record of when its epochs
// closed.

// byPartition groups one flow's manifests of partition count count by
// partition index.
func byPartition(ms []*Manifest, count int) [][]*Manifest {
	byPart := make([][]*Manifest, count)
	for _, m := range ms {
		if m.Partition.Count == count && m.Partition.Index < count {
			byPart[m.Partition.Index] = append(byPart[m.Partition.Index], m)
		}
	}
	return byPart
}

// OverlapAtMost finds the largest epoch e <= most at which every partition
// 0..count-1 has a backup among ms (one flow's usable manifests) of
// history h, and the backups a restore of e uses (see Overlap.Chosen). ok
// is false if there is none.
func OverlapAtMost(ms []*Manifest, count int, h recovery.History, most uint64) (Overlap, bool) {
	byPart := byPartition(ms, count)
	// The answer is most itself, or the top of some backup's range within
	// h (the epoch after it is missing from that backup's partition).
	var cands []uint64
	for _, list := range byPart {
		for _, m := range list {
			up := uint64(recovery.Agree(m.History(), h))
			if c := min(m.Epochs.Hi, up, most); c >= m.Epochs.Lo {
				cands = append(cands, c)
			}
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i] > cands[j] })
	for i, c := range cands {
		if i > 0 && c == cands[i-1] {
			continue
		}
		if o, ok := overlapAt(byPart, h, c); ok {
			return o, true
		}
	}
	return Overlap{}, false
}

// OldestOverlap finds the smallest epoch at which every partition has a
// backup among ms of history h: the oldest state of h a restore can lay
// down.
func OldestOverlap(ms []*Manifest, count int, h recovery.History) (Overlap, bool) {
	byPart := byPartition(ms, count)
	// The answer is the bottom of some backup's range (the epoch below it
	// is missing from that backup's partition).
	var cands []uint64
	for _, list := range byPart {
		for _, m := range list {
			if up := uint64(recovery.Agree(m.History(), h)); min(m.Epochs.Hi, up) >= m.Epochs.Lo {
				cands = append(cands, m.Epochs.Lo)
			}
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i] < cands[j] })
	for i, c := range cands {
		if i > 0 && c == cands[i-1] {
			continue
		}
		if o, ok := overlapAt(byPart, h, c); ok {
			return o, true
		}
	}
	return Overlap{}, false
}

// EpochClose is when a partition's frontier reached an epoch, as a
// manifest records it (the lowest and highest epoch of its range).
type EpochClose struct {
	Epoch uint64
	Time  time.Time
}

// EpochCloses lists what the manifests among ms of history h record of
// when h's epochs closed: each manifest's lowest and highest restorable
// epoch with its time, where that epoch is h's (the manifest's history
// agrees with h there). Partitions record an epoch's close within
// milliseconds of each other; the list holds every partition's record,
// sorted by epoch, then time.
func EpochCloses(ms []*Manifest, h recovery.History) []EpochClose {
	var out []EpochClose
	for _, m := range ms {
		up := uint64(recovery.Agree(m.History(), h))
		if m.Epochs.Lo <= up && !m.Epochs.LoTime.IsZero() {
			out = append(out, EpochClose{m.Epochs.Lo, m.Epochs.LoTime})
		}
		if m.Epochs.Hi <= up && !m.Epochs.HiTime.IsZero() {
			out = append(out, EpochClose{m.Epochs.Hi, m.Epochs.HiTime})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Epoch != out[j].Epoch {
			return out[i].Epoch < out[j].Epoch
		}
		return out[i].Time.Before(out[j].Time)
	})
	return out
}
