package restore

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
)

func newAuditor(t *testing.T, s backup.Store, o VerifyOptions) (*Auditor, *bytes.Buffer) {
	t.Helper()
	sched, err := backup.ParseSchedule("@every 1h")
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	return &Auditor{Store: s, Schedule: sched, Spec: "@every 1h", Options: o, Metrics: NewAuditMetrics(prometheus.NewRegistry()),
		Log: slog.New(slog.NewTextHandler(&log, nil))}, &log
}

// damageChunk flips a byte in the middle of chunk h (same size).
func damageChunk(s *memstore.Store, h string) {
	s.Mutate(backup.ChunkKey(h), func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b })
}

// A scheduled audit of a healthy location records its success; a chunk
// damaged in the store (same size: the listing cannot tell) is found by
// the deep sample, and the audit writes nothing (no quarantine).
func TestAudit_FindsDamageAndWritesNothing(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(3000)
	ms := f.backupAll()
	a, log := newAuditor(t, s, VerifyOptions{Sample: 100})
	rep, err := a.RunOnce(ctx)
	if err != nil || rep.Status != StatusHealthy || rep.ObjectsRead == 0 {
		t.Fatalf("audit of a healthy location: %v %+v", err, rep)
	}
	if v := testutil.ToFloat64(a.Metrics.LastSuccess); v == 0 || testutil.ToFloat64(a.Metrics.Problems) != 0 {
		t.Fatalf("last success %v, problems %v", v, testutil.ToFloat64(a.Metrics.Problems))
	}
	damageChunk(s, ms[1].Base.Chunks[0].SHA256)
	before := len(storedObjects(t, s))
	rep, err = a.RunOnce(ctx)
	if err != nil || rep.Status == StatusHealthy {
		t.Fatalf("audit of a damaged chunk: %v %+v", err, rep)
	}
	if got := testutil.ToFloat64(a.Metrics.Problems); got < 1 {
		t.Fatalf("flowkeep_verify_problems = %v after a damaged chunk", got)
	}
	if after := len(storedObjects(t, s)); after != before {
		t.Fatalf("the audit wrote %d objects (a quarantine marker?)", after-before)
	}
	if !strings.Contains(log.String(), "audit problem") {
		t.Fatalf("the log does not list the problem:\n%s", log)
	}
	if testutil.ToFloat64(a.Metrics.LastRun) < testutil.ToFloat64(a.Metrics.LastSuccess) {
		t.Fatal("last run is older than the last success")
	}
}

// In an encrypted location without an identity, an audit authenticates
// the indexes with the recipients and reads a sample of the chunks whole:
// a chunk that is not whole any more is a problem.
func TestAudit_EncryptedWithoutAnIdentity(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 1, s)
	f.epoch(3000)
	id := newIdentity(t)
	rs := f.backupSealed(id.Recipient())
	auth, err := backup.NewIndexAuth([]age.Recipient{id.Recipient()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := newAuditor(t, s, VerifyOptions{Sample: 100, Auth: auth})
	rep, err := a.RunOnce(ctx)
	if err != nil || rep.Status != StatusHealthy || rep.ObjectsRead == 0 || !strings.Contains(rep.Mode, "no identity") {
		t.Fatalf("audit: %v %+v", err, rep)
	}
	h := rs[0].Manifest.Base.Chunks[0].SHA256
	s.Mutate(backup.ChunkKey(h), func(b []byte) []byte { copy(b, "not age at all"); return b })
	rep, err = a.RunOnce(ctx)
	if err != nil || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0].Message, "not an age file") {
		t.Fatalf("audit of a replaced chunk: %v %+v", err, rep)
	}
}

// prunedDuring deletes a backup the first time verify lists the latest
// pointers, as a prune running beside the audit would (its chunks too).
type prunedDuring struct {
	*memstore.Store
	once sync.Once
	gone *backup.Manifest
}

func (p *prunedDuring) List(ctx context.Context, prefix, after string, fn func(backup.ObjectInfo) error) error {
	if prefix == backup.ChunksPrefix {
		p.once.Do(func() {
			p.Store.Delete(ctx, backup.ManifestKey(p.gone.Flow.UID, p.gone.Partition.Index, p.gone.ID))
			for _, ob := range p.gone.Objects() {
				p.Store.Delete(ctx, backup.ChunkKey(ob.SHA256))
			}
		})
	}
	return p.Store.List(ctx, prefix, after, fn)
}

// landedDuring makes a new backup the first time verify lists the latest
// pointers, as the agent running beside the audit would.
type landedDuring struct {
	*memstore.Store
	once sync.Once
	f    *flow
}

func (l *landedDuring) List(ctx context.Context, prefix, after string, fn func(backup.ObjectInfo) error) error {
	if prefix == backup.LatestPrefix {
		l.once.Do(func() {
			l.f.epoch(10)
			l.f.backupAll()
		})
	}
	return l.Store.List(ctx, prefix, after, fn)
}

// An audit runs beside the agent's backups and prunes: a backup pruned, or
// one that landed, while it read the location is no problem.
func TestAudit_BackupsAndPrunesBesideItAreNoProblem(t *testing.T) {
	ctx := context.Background()
	s := memstore.New()
	f := newFlow(t, 2, s)
	f.epoch(3000)
	old := f.backupAll()
	f.epoch(3000)
	f.backupAll()
	f.epoch(3000)
	f.backupAll()
	for _, st := range []backup.Store{&prunedDuring{Store: s, gone: old[0]}, &landedDuring{Store: s, f: f}} {
		a, _ := newAuditor(t, st, VerifyOptions{})
		rep, err := a.RunOnce(ctx)
		if err != nil || rep.Status != StatusHealthy {
			t.Fatalf("%T: %v %s %+v", st, err, rep.Status, rep.Problems)
		}
	}
}
