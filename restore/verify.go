package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// VerifyOptions configure an audit.
type VerifyOptions struct {
	// Deep downloads every object, checks its sha256, assembles each image
	// in a temporary directory and runs PRAGMA integrity_check on it.
	Deep bool
	// MaxAge: a restorable epoch older than this is a problem (RPO).
	MaxAge time.Duration
	// FlowUID restricts the audit to one flow.
	FlowUID string
	TempDir string
	Workers int
	Now     func() time.Time
}

// Status values of a Report.
const (
	StatusHealthy       = "healthy"
	StatusDegraded      = "restorable-with-problems"
	StatusNotRestorable = "not-restorable"
)

// Problem is one finding.
type Problem struct {
	Flow      string `json:"flow,omitempty"`
	Partition *int   `json:"partition,omitempty"`
	Backup    string `json:"backup,omitempty"`
	Message   string `json:"message"`
}

// FlowReport is the audit of one flow.
type FlowReport struct {
	UID        string    `json:"uid"`
	Name       string    `json:"name"`
	Partitions int       `json:"partitions"`
	Backups    int       `json:"backups"`
	Healthy    int       `json:"healthy_backups"`
	Restorable bool      `json:"restorable"`
	Epoch      uint64    `json:"restorable_epoch,omitempty"`
	EpochTime  time.Time `json:"restorable_epoch_time,omitempty"`
	AgeSeconds float64   `json:"age_seconds,omitempty"`
	Chosen     []string  `json:"chosen_backups,omitempty"`
	Reason     string    `json:"not_restorable_reason,omitempty"`
}

// Report is what verify found.
type Report struct {
	From     string       `json:"from"`
	Mode     string       `json:"mode"`
	Status   string       `json:"status"`
	Flows    []FlowReport `json:"flows"`
	Problems []Problem    `json:"problems"`
	Checked  int          `json:"backups_checked"`
	Objects  int          `json:"objects_checked"`
}

// Verify audits the backups in s and says whether, and to which epoch and
// wall time, each flow can be restored.
func Verify(ctx context.Context, s backup.Store, o VerifyOptions) (*Report, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	rep := &Report{From: s.String(), Mode: "quick", Problems: []Problem{}}
	if o.Deep {
		rep.Mode = "deep"
	}
	cat, err := backup.LoadCatalog(ctx, s, o.Workers)
	if err != nil {
		return nil, err
	}
	for _, b := range cat.Broken {
		pr := Problem{Backup: b.Key, Message: "unreadable manifest: " + b.Err.Error()}
		if b.Ref.FlowUID != "" {
			pr.Flow = b.Ref.FlowUID
			i := b.Ref.Index
			pr.Partition = &i
		}
		rep.Problems = append(rep.Problems, pr)
	}
	stored := map[string]int64{}
	err = s.List(ctx, backup.ChunksPrefix, "", func(oi backup.ObjectInfo) error {
		stored[oi.Key] = oi.Size
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list chunks: %w", err)
	}
	bad := map[string]bool{}
	problem := func(m *backup.Manifest, msg string) {
		i := m.Partition.Index
		rep.Problems = append(rep.Problems, Problem{Flow: m.Flow.UID, Partition: &i, Backup: m.ID, Message: msg})
		bad[m.ID] = true
	}
	var ms []*backup.Manifest
	for _, m := range cat.Manifests {
		if o.FlowUID != "" && m.Flow.UID != o.FlowUID {
			continue
		}
		ms = append(ms, m)
		rep.Checked++
		for _, ob := range m.Objects() {
			rep.Objects++
			size, ok := stored[backup.ChunkKey(ob.SHA256)]
			switch {
			case !ok:
				problem(m, fmt.Sprintf("chunk %s is missing", ob.SHA256[:12]))
			case size != ob.Stored:
				problem(m, fmt.Sprintf("chunk %s is %d bytes, the manifest says %d (truncated or replaced)", ob.SHA256[:12], size, ob.Stored))
			default:
				continue
			}
			break
		}
	}
	if o.Deep {
		if err := deepCheck(ctx, s, ms, bad, problem, o); err != nil {
			return nil, err
		}
	}
	flows := flowsOf(ms)
	if o.FlowUID == "" && len(flows) > 1 {
		rep.Problems = append(rep.Problems, Problem{Message: fmt.Sprintf("backups of %d flows share this location: %s; give each flow its own prefix, and restore with --flow", len(flows), describeFlows(flows))})
	}
	if len(ms) == 0 {
		rep.Problems = append(rep.Problems, Problem{Message: "there are no backups here"})
	}
	uids := make([]string, 0, len(flows))
	for uid := range flows {
		uids = append(uids, uid)
	}
	sort.Strings(uids)
	now := o.Now()
	for _, uid := range uids {
		fr := FlowReport{UID: uid, Name: flows[uid].Name}
		for _, m := range ms {
			if m.Flow.UID == uid {
				fr.Backups++
				fr.Partitions = max(fr.Partitions, m.Partition.Count)
				if !bad[m.ID] {
					fr.Healthy++
				}
			}
		}
		plan, err := MakePlan(ms, PlanOptions{FlowUID: uid, Exclude: bad})
		if err != nil {
			fr.Reason = err.Error()
			rep.Problems = append(rep.Problems, Problem{Flow: uid, Message: err.Error()})
		} else {
			fr.Restorable = true
			fr.Epoch, fr.EpochTime = plan.Epoch, plan.EpochTime
			if !plan.EpochTime.IsZero() {
				fr.AgeSeconds = now.Sub(plan.EpochTime).Seconds()
			}
			for _, m := range plan.Chosen {
				fr.Chosen = append(fr.Chosen, m.ID)
			}
			if o.MaxAge > 0 && now.Sub(plan.EpochTime) > o.MaxAge {
				rep.Problems = append(rep.Problems, Problem{Flow: uid, Message: fmt.Sprintf("the newest restorable epoch %d is %v old, more than --max-age %v: backups are falling behind (RPO)",
					plan.Epoch, now.Sub(plan.EpochTime).Round(time.Second), o.MaxAge)})
			}
		}
		rep.Flows = append(rep.Flows, fr)
	}
	rep.Status = StatusHealthy
	if len(rep.Problems) > 0 {
		rep.Status = StatusDegraded
	}
	restorable := len(rep.Flows) > 0
	for _, f := range rep.Flows {
		restorable = restorable && f.Restorable
	}
	if !restorable {
		rep.Status = StatusNotRestorable
	}
	return rep, nil
}

// deepCheck restores every healthy-looking backup into a temporary directory
// and checks it end to end.
func deepCheck(ctx context.Context, s backup.Store, ms []*backup.Manifest, bad map[string]bool, problem func(*backup.Manifest, string), o VerifyOptions) error {
	tmp, err := os.MkdirTemp(o.TempDir, "flowkeep-verify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, m := range ms {
		if bad[m.ID] {
			continue
		}
		path := filepath.Join(tmp, m.ID+".sqlite3")
		err := FetchImage(ctx, s, m, path, FetchOptions{Workers: o.Workers, ImageSum: true}, new(atomic.Int64))
		if err == nil {
			err = checkIdentity(ctx, path, m)
		}
		if err == nil {
			err = IntegrityCheck(ctx, path)
		}
		removeDB(path)
		if err != nil {
			if errors.Is(err, backup.ErrCorrupt) || errors.Is(err, backup.ErrNotFound) {
				problem(m, err.Error())
				continue
			}
			return fmt.Errorf("deep check of backup %s: %w", m.ID, err)
		}
	}
	return nil
}
