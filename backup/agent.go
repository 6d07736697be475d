package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/flowkeep/flowkeep/recovery"
)

// ParseSchedule parses a cron spec: five fields ("*/5 * * * *") or a
// descriptor ("@hourly", "@every 5m").
func ParseSchedule(spec string) (cron.Schedule, error) {
	p := cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	s, err := p.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("invalid schedule %q: %v (use five cron fields like \"*/5 * * * *\" or \"@every 5m\")", spec, err)
	}
	return s, nil
}

// MaxGap is the longest time between two runs of s, over its next runs.
func MaxGap(s cron.Schedule, from time.Time) time.Duration {
	var gap time.Duration
	t := s.Next(from)
	for i := 0; i < 200; i++ {
		n := s.Next(t)
		if n.IsZero() {
			break
		}
		gap = max(gap, n.Sub(t))
		t = n
	}
	return gap
}

// Metrics are the agent's Prometheus metrics.
type Metrics struct {
	LastSuccess    *prometheus.GaugeVec
	RestorableHi   *prometheus.GaugeVec
	BytesUploaded  *prometheus.CounterVec
	ObjectsUpload  *prometheus.CounterVec
	ObjectsSkipped *prometheus.CounterVec
	Duration       *prometheus.HistogramVec
	Failures       *prometheus.CounterVec
	GapTooLong     prometheus.Gauge
}

// NewMetrics registers the agent's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	part := []string{"partition"}
	m := &Metrics{
		LastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowkeep_backup_last_success_timestamp_seconds",
			Help: "Unix time of the last successful backup of each partition."}, part),
		RestorableHi: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowkeep_backup_restorable_epoch",
			Help: "Highest epoch the last backup of each partition can restore to."}, part),
		BytesUploaded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_uploaded_bytes_total",
			Help: "Bytes uploaded (as stored, compressed), per partition."}, part),
		ObjectsUpload: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_uploaded_objects_total",
			Help: "Chunks uploaded, per partition."}, part),
		ObjectsSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_skipped_objects_total",
			Help: "Chunks not uploaded because they were already stored, per partition."}, part),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flowkeep_backup_duration_seconds",
			Help: "Duration of partition backups.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}, part),
		Failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_failures_total",
			Help: "Failed partition backups."}, part),
		GapTooLong: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowkeep_backup_schedule_exceeds_backup_interval",
			Help: "1 if the schedule's longest gap exceeds the flow's backup interval (-b): partition backups may not overlap."}),
	}
	reg.MustRegister(m.LastSuccess, m.RestorableHi, m.BytesUploaded, m.ObjectsUpload, m.ObjectsSkipped, m.Duration, m.Failures, m.GapTooLong)
	return m
}

// Observe records one backup run's results.
func (m *Metrics) Observe(results []*Result) {
	for _, r := range results {
		p := strconv.Itoa(r.Partition)
		m.BytesUploaded.WithLabelValues(p).Add(float64(r.BytesUploaded))
		m.ObjectsUpload.WithLabelValues(p).Add(float64(r.ObjectsUploaded))
		m.ObjectsSkipped.WithLabelValues(p).Add(float64(r.ObjectsSkipped))
		m.Duration.WithLabelValues(p).Observe(r.Duration.Seconds())
		if r.Err != nil {
			m.Failures.WithLabelValues(p).Inc()
			continue
		}
		m.LastSuccess.WithLabelValues(p).Set(float64(r.Manifest.Created.Unix()))
		m.RestorableHi.WithLabelValues(p).Set(float64(r.Manifest.Epochs.Hi))
	}
}

// Agent backs up a recovery directory on a schedule.
type Agent struct {
	Store    Store
	Dir      string
	Schedule cron.Schedule
	Spec     string
	Options  Options
	Metrics  *Metrics
	Log      *slog.Logger
	// OnRun, if set, is called after every run (tests).
	OnRun func([]*Result, error)

	mu sync.Mutex
}

// CheckInterval warns when the schedule's longest gap is longer than the
// flow's backup interval (-b, read from the partitions): backups of
// different partitions may then not share a restorable epoch.
func (a *Agent) CheckInterval(ctx context.Context) (time.Duration, time.Duration, bool) {
	gap := MaxGap(a.Schedule, time.Now())
	b, ok := backupInterval(ctx, a.Dir)
	too := ok && gap > b
	if a.Metrics != nil {
		if too {
			a.Metrics.GapTooLong.Set(1)
		} else {
			a.Metrics.GapTooLong.Set(0)
		}
	}
	if too {
		a.Log.Warn("WARNING: the backup schedule is sparser than the flow's backup interval: backups of different partitions may not overlap and the flow may not be restorable; back up more often or run flowrun with a longer -b",
			"schedule", a.Spec, "longest_gap", gap, "backup_interval", b)
	}
	return gap, b, too
}

func backupInterval(ctx context.Context, dir string) (time.Duration, bool) {
	ps, err := recovery.Find(ctx, dir, true)
	if err != nil || len(ps) == 0 {
		return 0, false
	}
	defer recovery.CloseAll(ps)
	v, err := recovery.ReadView(ctx, ps[0].DB)
	if err != nil || v.Last() == nil {
		return 0, false
	}
	return v.Intervals.Backup, true
}

// RunOnce backs up every partition once and records metrics.
func (a *Agent) RunOnce(ctx context.Context) ([]*Result, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.Log == nil {
		a.Log = slog.Default()
	}
	a.CheckInterval(ctx)
	results, err := BackupDir(ctx, a.Store, a.Dir, a.Options)
	if a.Metrics != nil {
		a.Metrics.Observe(results)
	}
	for _, r := range results {
		if r.Err != nil {
			a.Log.Error("backup failed", "partition", r.Partition, "err", r.Err)
			continue
		}
		a.Log.Info("backed up", "partition", r.Partition, "kind", r.Kind, "id", r.Manifest.ID,
			"epochs", fmt.Sprintf("%d..%d", r.Manifest.Epochs.Lo, r.Manifest.Epochs.Hi),
			"uploaded_bytes", r.BytesUploaded, "uploaded_objects", r.ObjectsUploaded, "skipped_objects", r.ObjectsSkipped,
			"duration", r.Duration.Round(time.Millisecond))
	}
	if err != nil && len(results) == 0 {
		a.Log.Error("backup run failed", "err", err)
	}
	if a.OnRun != nil {
		a.OnRun(results, err)
	}
	return results, err
}

// Run backs up once now, then on every tick of the schedule until ctx ends.
// A run still going when the next tick comes makes that tick skip.
func (a *Agent) Run(ctx context.Context) error {
	a.RunOnce(ctx)
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
