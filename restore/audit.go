package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"golang.org/x/sync/errgroup"

	"github.com/flowkeep/flowkeep/backup"
)

// Auditor runs verify on a schedule of its own (flowbackup agent
// --verify-schedule), as restic check --read-data-subset from cron or
// pgBackRest verify do: each audit is a deep check of a random Sample
// percent of the chunks (100: every backup rebuilt, as verify --deep),
// read-only (it never quarantines: a read-only identity can run it), and
// its outcome is exported (AuditMetrics).
//
// In an encrypted location, reading a chunk's content needs an identity
// (Options.Keys), which the agent does not hold: without one an audit is a
// quick verify whose plaintext indexes are authenticated with the
// recipients' keys (Options.Auth: every index tag checked, every chunk
// listed present with its stored size, the overlap and lineages checked)
// plus a read of a random Sample percent of the chunks, each checked whole:
// its stored size and age header (what can be known of it without the
// key). It finds a chunk that cannot be read (an archive storage class, an
// object the store lost) but not bit rot inside one; run verify --sample
// with --identity-file elsewhere for that.
//
// An audit runs beside backups and prunes: a problem it found with a
// backup whose manifest was deleted before the audit ended (a prune ran) is
// not reported.
type Auditor struct {
	Store    backup.Store
	Schedule cron.Schedule
	Spec     string
	// Options are verify's; Deep and Quarantine are set by the auditor
	// (Deep when Sample is above 0 and the chunks can be read).
	Options VerifyOptions
	Metrics *AuditMetrics
	Log     *slog.Logger
	// OnAudit, if set, is called after every audit (tests).
	OnAudit func(*Report, error)

	mu sync.Mutex
}

// AuditMetrics are the scheduled audits' Prometheus metrics.
type AuditMetrics struct {
	LastSuccess prometheus.Gauge
	LastRun     prometheus.Gauge
	Problems    prometheus.Gauge
	Failures    prometheus.Counter
	Period      prometheus.Gauge
	Since       prometheus.Gauge
}

// AuditMetricNames lists every metric NewAuditMetrics registers.
var AuditMetricNames = []string{
	"flowkeep_verify_last_success_timestamp_seconds", "flowkeep_verify_last_run_timestamp_seconds", "flowkeep_verify_problems",
	"flowkeep_verify_failures_total", "flowkeep_verify_schedule_period_seconds", "flowkeep_verify_schedule_start_timestamp_seconds",
}

// NewAuditMetrics registers the audit metrics with reg.
func NewAuditMetrics(reg prometheus.Registerer) *AuditMetrics {
	m := &AuditMetrics{
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowkeep_verify_last_success_timestamp_seconds",
			Help: "Unix time the last scheduled audit ended that found the backups healthy (0: none yet)."}),
		LastRun: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowkeep_verify_last_run_timestamp_seconds",
			Help: "Unix time the last scheduled audit ended, whatever it found (0: none yet)."}),
		Problems: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowkeep_verify_problems",
			Help: "Problems the last scheduled audit that ran to its end found (flowbackup verify's problems: damaged or missing chunks, unreadable manifests, strays, not restorable ...); the agent's log lists them."}),
		Failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "flowkeep_verify_failures_total",
			Help: "Scheduled audits that could not run to their end (the location could not be read, keys missing)."}),
		Period: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowkeep_verify_schedule_period_seconds",
			Help: "The longest time between two scheduled audits (--verify-schedule)."}),
		Since: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowkeep_verify_schedule_start_timestamp_seconds",
			Help: "Unix time the agent started its audit schedule (the first audit is due one period later)."}),
	}
	reg.MustRegister(m.LastSuccess, m.LastRun, m.Problems, m.Failures, m.Period, m.Since)
	return m
}

// RunOnce runs one audit now and records its outcome; the report is nil
// when the audit could not run to its end.
func (a *Auditor) RunOnce(ctx context.Context) (*Report, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	log := a.Log
	if log == nil {
		log = slog.Default()
	}
	o := a.Options
	if o.Now == nil {
		o.Now = time.Now
	}
	began := o.Now()
	rep, err := a.audit(ctx, o)
	if m := a.Metrics; m != nil && ctx.Err() == nil {
		m.LastRun.Set(float64(o.Now().Unix()))
		switch {
		case err != nil:
			m.Failures.Inc()
		default:
			m.Problems.Set(float64(len(rep.Problems)))
			if rep.Status == StatusHealthy {
				m.LastSuccess.Set(float64(o.Now().Unix()))
			}
		}
	}
	took := o.Now().Sub(began).Round(time.Millisecond)
	switch {
	case err != nil && ctx.Err() != nil:
	case err != nil:
		log.Error("audit failed", "from", a.Store.String(), "err", err, "took", took)
	case len(rep.Problems) == 0:
		log.Info("audit: healthy", "from", rep.From, "mode", rep.Mode, "backups", rep.Checked, "objects_read", rep.ObjectsRead,
			"bytes_read", rep.BytesRead, "took", took)
	default:
		log.Warn("audit found problems (flowbackup verify --from the location says the same)", "from", rep.From, "mode", rep.Mode,
			"status", rep.Status, "problems", len(rep.Problems), "took", took)
		for i, p := range rep.Problems {
			if i == 20 {
				log.Warn("audit: more problems not logged", "more", len(rep.Problems)-i)
				break
			}
			log.Warn("audit problem", "problem", describeProblem(p))
		}
	}
	if a.OnAudit != nil {
		a.OnAudit(rep, err)
	}
	return rep, err
}

// describeProblem says where a problem is, then what it is.
func describeProblem(p Problem) string {
	where := ""
	if p.Partition != nil {
		where = fmt.Sprintf("partition %d ", *p.Partition)
	}
	if p.Backup != "" {
		where += "backup " + p.Backup + ": "
	}
	return where + p.Message
}

// audit is one audit (see Auditor).
func (a *Auditor) audit(ctx context.Context, o VerifyOptions) (*Report, error) {
	o.Quarantine, o.Newest = false, false
	o.Deep = o.Sample > 0
	readSample := false
	if o.Deep && !o.Keys.CanOpen() {
		cfg, _, err := backup.ConfigFor(ctx, a.Store, nil, nil)
		if err != nil {
			return nil, err
		}
		if o.Auth != nil || cfg != nil && cfg.Encryption == backup.SchemeAge {
			o.Deep, readSample = false, true
		}
	}
	rep, err := Verify(ctx, a.Store, o)
	if errors.Is(err, backup.ErrIdentityRequired) && o.Deep {
		// Encrypted backups in a location whose config does not say so
		// (written before configs).
		o.Deep, readSample = false, true
		rep, err = Verify(ctx, a.Store, o)
	}
	if err != nil {
		return nil, err
	}
	if readSample {
		if err := readChunks(ctx, a.Store, o, rep); err != nil {
			return nil, err
		}
	}
	if err := dropPruned(ctx, a.Store, rep); err != nil {
		return nil, err
	}
	return rep, nil
}

// readChunks reads a random o.Sample percent of the chunks the believed
// backups name and checks each is whole as far as it can be without a key
// (its stored size; an encrypted one's age header), reporting those that
// are not (the quick verify in rep already listed them present).
func readChunks(ctx context.Context, s backup.Store, o VerifyOptions, rep *Report) error {
	cat, err := backup.LoadTrustedCatalog(ctx, s, backup.ReadPolicy{Workers: o.Workers, Trusted: o.Trusted, Auth: o.indexAuth()})
	if err != nil {
		return err
	}
	users := map[string]*backup.Manifest{}
	unique := map[string]backup.Object{}
	for _, m := range cat.Manifests {
		if o.FlowUID != "" && m.Flow.UID != o.FlowUID {
			continue
		}
		for _, ob := range m.Objects() {
			unique[ob.SHA256] = ob
			users[ob.SHA256] = m
		}
	}
	names := make([]string, 0, len(unique))
	for k := range unique {
		names = append(names, k)
	}
	sort.Strings(names)
	rand.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	names = names[:min(len(names), int(float64(len(names))*min(o.Sample, 100)/100+0.999999))]
	rep.Mode = fmt.Sprintf("quick, %g%% of the chunks read (encrypted; no identity to read their content)", min(o.Sample, 100))
	rep.Sampled = len(names)
	mem := o.Memory
	if mem <= 0 {
		mem = backup.DefaultMemory
	}
	budget := backup.NewBudget(mem)
	var mu sync.Mutex
	bad := map[string]bool{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(o.Workers, 1))
	for _, h := range names {
		ob := unique[h]
		release, err := budget.Acquire(gctx, ob.Stored)
		if err != nil {
			break
		}
		g.Go(func() error {
			defer release()
			why, err := readWhole(gctx, s, ob)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			rep.ObjectsRead++
			rep.BytesRead += ob.Stored
			if why != "" {
				m := users[h]
				if bad[m.ID] {
					return nil
				}
				bad[m.ID] = true
				i := m.Partition.Index
				rep.Problems = append(rep.Problems, Problem{Flow: m.Flow.UID, Partition: &i, Backup: m.ID, Message: why})
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(rep.Problems) > 0 && rep.Status == StatusHealthy {
		rep.Status = StatusDegraded
	}
	return nil
}

// ageHeader starts every age file.
var ageHeader = []byte("age-encryption.org/v1\n")

// readWhole reads one chunk (twice, if the first read is not whole) and
// says why it is not whole ("" if it is); other errors are the audit's.
func readWhole(ctx context.Context, s backup.Store, ob backup.Object) (string, error) {
	why := ""
	for attempt := 0; attempt < 2; attempt++ {
		b, err := backup.ReadSized(ctx, s, backup.ChunkKey(ob.SHA256), ob.Stored)
		switch {
		case errors.Is(err, backup.ErrNotFound):
			return fmt.Sprintf("chunk %s is missing", ob.SHA256[:12]), nil
		case errors.Is(err, backup.ErrCorrupt):
			why = fmt.Sprintf("chunk %s: %v", ob.SHA256[:12], err)
		case err != nil:
			return fmt.Sprintf("chunk %s could not be read: %v", ob.SHA256[:12], err), nil
		case int64(len(b)) != ob.Stored:
			why = fmt.Sprintf("chunk %s: %d bytes read, the manifest says %d", ob.SHA256[:12], len(b), ob.Stored)
		case !bytes.HasPrefix(b, ageHeader):
			why = fmt.Sprintf("chunk %s is not an age file (damaged, or replaced)", ob.SHA256[:12])
		default:
			return "", nil
		}
	}
	return why, nil
}

// dropPruned leaves out the problems of backups whose manifest is gone by
// now (deleted by a prune while the audit read them), and reports the
// location healthy if no problem is left.
func dropPruned(ctx context.Context, s backup.Store, rep *Report) error {
	kept := rep.Problems[:0]
	for _, p := range rep.Problems {
		if p.Backup != "" && p.Flow != "" && p.Partition != nil {
			key := p.Backup
			if !strings.HasPrefix(key, backup.ManifestsPrefix) {
				key = backup.ManifestKey(p.Flow, *p.Partition, p.Backup)
			}
			_, err := s.Stat(ctx, key)
			if errors.Is(err, backup.ErrNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("check %s: %w", key, err)
			}
		}
		kept = append(kept, p)
	}
	rep.Problems = kept
	if len(kept) == 0 && rep.Status == StatusDegraded {
		rep.Status = StatusHealthy
	}
	return nil
}

// Announce exports the schedule: its period, and since when it runs. A
// caller that starts Run on another goroutine and then says the audits
// are scheduled calls it first, so that a scrape shows what it says.
func (a *Auditor) Announce() {
	if m := a.Metrics; m != nil {
		m.Period.Set(backup.MaxGap(a.Schedule, time.Now()).Seconds())
		m.Since.Set(float64(time.Now().Unix()))
	}
}

// Run audits on every tick of the schedule until ctx ends (not at once:
// an agent restarted often would audit as often). An audit still going
// when the next tick comes makes that tick skip. It announces the
// schedule first (Announce).
func (a *Auditor) Run(ctx context.Context) error {
	a.Announce()
	c := cron.New(cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger)))
	c.Schedule(a.Schedule, cron.FuncJob(func() {
		if ctx.Err() == nil {
			a.RunOnce(ctx)
		}
	}))
	c.Start()
	<-ctx.Done()
	<-c.Stop().Done()
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return ctx.Err()
}
