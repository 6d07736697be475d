package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/flowkeep/flowkeep/recovery"
)

// ScheduleFloor is the shortest gap between backups the agent runs without
// a warning.
const ScheduleFloor = time.Minute

// ParseSchedule parses a cron spec: five fields ("*/5 * * * *") or a
// descriptor ("@hourly", "@every 5m"). An @every interval must be positive
// (the cron library would quietly make "@every 0s" or "@every -5m" one
// second).
func ParseSchedule(spec string) (cron.Schedule, error) {
	if rest, ok := strings.CutPrefix(strings.TrimSpace(spec), "@every"); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("invalid schedule %q: @every needs a positive duration, e.g. \"@every 5m\"", spec)
		}
		if d < time.Second {
			// The cron library rounds it up to a second in silence.
			return nil, fmt.Errorf("invalid schedule %q: @every needs at least 1s (cron schedules have a resolution of one second)", spec)
		}
	}
	p := cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	s, err := p.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("invalid schedule %q: %v (use five cron fields like \"*/5 * * * *\" or \"@every 5m\")", spec, err)
	}
	return s, nil
}

// MaxGap is the longest time between two runs of s, over its next runs.
func MaxGap(s cron.Schedule, from time.Time) time.Duration {
	gap, _ := gaps(s, from)
	return gap
}

// MinGap is the shortest time between two runs of s, over its next runs.
func MinGap(s cron.Schedule, from time.Time) time.Duration {
	_, gap := gaps(s, from)
	return gap
}

func gaps(s cron.Schedule, from time.Time) (longest, shortest time.Duration) {
	t := s.Next(from)
	for i := 0; i < 200; i++ {
		n := s.Next(t)
		if n.IsZero() {
			break
		}
		d := n.Sub(t)
		longest = max(longest, d)
		if shortest == 0 || d < shortest {
			shortest = d
		}
		t = n
	}
	return longest, shortest
}

// restorable is the newest point a partition's backups restore to: its
// epoch, and the time the RPO counts from (the epoch's close, or the last
// check that found the partition unchanged).
type restorable struct {
	epoch uint64
	at    time.Time
}

// RunPartition is the partition label of the agent's run-level series:
// flowkeep_backup_last_attempt_timestamp_seconds{partition="all"} is set at
// the end of every run, whatever happened, and
// flowkeep_backup_failures_total{partition="all"} counts failed runs,
// including those that failed before any partition was touched (a
// destination that cannot be reached or refuses, a recovery directory that
// cannot be read). They exist before any partition is known; their flow
// label is empty until the agent has read the flow's name from its
// partitions (a first run before flowrun made or ran them).
const RunPartition = "all"

// Metrics are the agent's Prometheus metrics, labelled by flow (name) and
// partition (an index, or RunPartition for the agent's runs).
type Metrics struct {
	LastSuccess    *prometheus.GaugeVec
	LastAttempt    *prometheus.GaugeVec
	RestorableHi   *prometheus.GaugeVec
	BytesUploaded  *prometheus.CounterVec
	ObjectsUpload  *prometheus.CounterVec
	ObjectsSkipped *prometheus.CounterVec
	Skipped        *prometheus.CounterVec
	Duration       *prometheus.HistogramVec
	Failures       *prometheus.CounterVec
	PruneFailures  prometheus.Counter
	GapTooLong     prometheus.Gauge
	// Fenced is 1 while a newer lineage of the flow claims the location
	// (this machine's history is not the one restores use); Fork is 1
	// while another history of the flow is alive beside this one.
	Fenced *prometheus.GaugeVec
	Fork   *prometheus.GaugeVec

	mu     sync.Mutex
	newest map[[2]string]restorable // per flow and partition
	dir    string                   // the recovery directory whose lag is measured (Watch)
	now    func() time.Time
}

// MetricNames lists every metric NewMetrics registers (dashboards and
// alert rules are checked against it).
var MetricNames = []string{
	"flowkeep_backup_last_success_timestamp_seconds", "flowkeep_backup_last_attempt_timestamp_seconds",
	"flowkeep_backup_restorable_epoch", "flowkeep_backup_rpo_seconds", "flowkeep_backup_uploaded_bytes_total",
	"flowkeep_backup_uploaded_objects_total", "flowkeep_backup_skipped_objects_total", "flowkeep_backup_skipped_total",
	"flowkeep_backup_duration_seconds", "flowkeep_backup_failures_total", "flowkeep_backup_prune_failures_total",
	"flowkeep_backup_schedule_exceeds_backup_interval", "flowkeep_backup_lag_epochs", "flowkeep_backup_lag_seconds",
	"flowkeep_backup_fenced", "flowkeep_backup_fork",
}

var rpoDesc = prometheus.NewDesc("flowkeep_backup_rpo_seconds",
	"Age of the oldest change each partition holds that its backups do not (read at scrape time): how much a restore now would lose; 0 for a partition whose backups hold everything (an idle flow).", []string{"flow", "partition"}, nil)

// NewMetrics registers the agent's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	part := []string{"flow", "partition"}
	m := &Metrics{
		LastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowkeep_backup_last_success_timestamp_seconds",
			Help: "Unix time of the last successful backup of each partition."}, part),
		LastAttempt: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowkeep_backup_last_attempt_timestamp_seconds",
			Help: "Unix time of the last backup attempt of each partition (successful, failed or skipped); partition=\"all\": the end of the agent's last run, whatever its outcome."}, part),
		RestorableHi: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowkeep_backup_restorable_epoch",
			Help: "Highest epoch the last backup of each partition can restore to."}, part),
		BytesUploaded: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_uploaded_bytes_total",
			Help: "Bytes uploaded (as stored, compressed), per partition."}, part),
		ObjectsUpload: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_uploaded_objects_total",
			Help: "Chunks uploaded, per partition."}, part),
		ObjectsSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_skipped_objects_total",
			Help: "Chunks not uploaded because they were already stored, per partition."}, part),
		Skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_skipped_total",
			Help: "Partition backups skipped: unchanged since the last one, or locked by another agent or a prune."}, append(part, "reason")),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flowkeep_backup_duration_seconds",
			Help: "Duration of partition backups.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}, part),
		Failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_backup_failures_total",
			Help: "Failed partition backups; partition=\"all\": failed agent runs, those that failed before touching any partition (destination, recovery directory) included."}, part),
		PruneFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "flowkeep_backup_prune_failures_total",
			Help: "Failed retention runs (prune after backups)."}),
		GapTooLong: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowkeep_backup_schedule_exceeds_backup_interval",
			Help: "1 if the schedule's longest gap exceeds the flow's backup interval (-b): partition backups may not overlap."}),
		Fenced: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowkeep_backup_fenced",
			Help: "1 while a newer lineage (history) of the flow claims the backup location, so this agent stops backing it up: another machine runs the flow (a restore, or a copy of its files). --take-over overrides."}, []string{"flow"}),
		Fork: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowkeep_backup_fork",
			Help: "1 while another lineage (history) of the flow is alive beside this one: two machines are running it."}, []string{"flow"}),
		newest: map[[2]string]restorable{},
		now:    time.Now,
	}
	reg.MustRegister(m.LastSuccess, m.LastAttempt, m.RestorableHi, m.BytesUploaded, m.ObjectsUpload, m.ObjectsSkipped, m.Skipped,
		m.Duration, m.Failures, m.PruneFailures, m.GapTooLong, m.Fenced, m.Fork, rpoCollector{m}, lagCollector{m})
	return m
}

type rpoCollector struct{ m *Metrics }

func (c rpoCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rpoDesc }
func (c rpoCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	dir, now := c.m.dir, c.m.now
	c.m.mu.Unlock()
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, l := range partitionLags(ctx, dir, c.m.backedUp, now) {
		ch <- prometheus.MustNewConstMetric(rpoDesc, prometheus.GaugeValue, l.RPO, l.Flow, strconv.Itoa(l.Partition))
	}
}

var (
	lagEpochsDesc = prometheus.NewDesc("flowkeep_backup_lag_epochs",
		"Epochs by which each partition's newest backup trails the flow's durable epoch as the partition records it now (read at scrape time).", []string{"flow", "partition"}, nil)
	lagSecondsDesc = prometheus.NewDesc("flowkeep_backup_lag_seconds",
		"Seconds of the flow's progress (epoch close times) by which each partition's newest backup trails its durable epoch now.", []string{"flow", "partition"}, nil)
)

// Watch makes the lag metrics compare the backups with the partitions in
// dir: at each scrape, each partition's durable epoch is read (read-only)
// and set against the newest epoch its backups restore to.
func (m *Metrics) Watch(dir string) {
	m.mu.Lock()
	m.dir = dir
	m.mu.Unlock()
}

type lagCollector struct{ m *Metrics }

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- lagEpochsDesc; ch <- lagSecondsDesc }
func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	dir := c.m.dir
	c.m.mu.Unlock()
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, l := range PartitionLags(ctx, dir, c.m.backedUp) {
		ch <- prometheus.MustNewConstMetric(lagEpochsDesc, prometheus.GaugeValue, float64(l.Epochs), l.Flow, strconv.Itoa(l.Partition))
		ch <- prometheus.MustNewConstMetric(lagSecondsDesc, prometheus.GaugeValue, l.Seconds, l.Flow, strconv.Itoa(l.Partition))
	}
}

// backedUp is the newest restorable epoch and its time of a partition's
// backups, as the agent last saw them.
func (m *Metrics) backedUp(flow string, partition int) (uint64, time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{flow, strconv.Itoa(partition)}
	r, ok := m.newest[k]
	return r.epoch, r.at, ok
}

// Lag is how far one partition's newest backup trails the flow's durable
// epoch as that partition records it.
type Lag struct {
	Flow      string
	Partition int
	Durable   uint64 // the partition's durable epoch now
	BackedUp  uint64 // the newest epoch its backups restore to
	Epochs    uint64 // Durable - BackedUp (0 when the backup is current)
	Seconds   float64
	// RPO is the age of the oldest change the partition holds that its
	// backups do not (0 when they hold everything: an idle flow).
	RPO float64
}

// PartitionLags reads each partition in dir and compares its durable epoch
// with the newest epoch its backups restore to (from backedUp). Partitions
// without a backup yet, or that cannot be read, are left out.
func PartitionLags(ctx context.Context, dir string, backedUp func(flow string, partition int) (uint64, time.Time, bool)) []Lag {
	return partitionLags(ctx, dir, backedUp, time.Now)
}

func partitionLags(ctx context.Context, dir string, backedUp func(flow string, partition int) (uint64, time.Time, bool), now func() time.Time) []Lag {
	ps, err := recovery.Find(ctx, dir, true)
	if err != nil {
		return nil
	}
	defer recovery.CloseAll(ps)
	var out []Lag
	for _, p := range ps {
		v, err := recovery.ReadView(ctx, p.DB)
		if err != nil {
			continue
		}
		hi, hiTime, ok := backedUp(v.FlowName, int(p.Index))
		if !ok {
			continue
		}
		l := Lag{Flow: v.FlowName, Partition: int(p.Index), Durable: uint64(v.Hi()), BackedUp: hi}
		if e, ok, err := recovery.OldestChangeSince(ctx, p.DB, recovery.Epoch(hi)); err == nil && ok {
			if t, err := recovery.EpochTime(ctx, p.DB, e); err == nil && !t.IsZero() {
				l.RPO = max(0, now().Sub(t).Seconds())
			}
		}
		if l.Durable > hi {
			l.Epochs = l.Durable - hi
			if t, err := recovery.EpochTime(ctx, p.DB, v.Hi()); err == nil && !t.IsZero() && !hiTime.IsZero() {
				l.Seconds = max(0, t.Sub(hiTime).Seconds())
			}
		}
		out = append(out, l)
	}
	return out
}

// SetNow sets the clock the scrape-time metrics read (tests).
func (m *Metrics) SetNow(now func() time.Time) {
	m.mu.Lock()
	m.now = now
	m.mu.Unlock()
}

// Known makes every counter of a flow's partitions exist at 0 before the
// first backup (so rates and alerts see them from the start).
func (m *Metrics) Known(flow string, partitions []int) {
	for _, i := range partitions {
		p := strconv.Itoa(i)
		m.BytesUploaded.WithLabelValues(flow, p)
		m.ObjectsUpload.WithLabelValues(flow, p)
		m.ObjectsSkipped.WithLabelValues(flow, p)
		m.Failures.WithLabelValues(flow, p)
		for _, r := range []string{SkipUnchanged, SkipLocked, SkipRestored} {
			m.Skipped.WithLabelValues(flow, p, r)
		}
	}
}

// Started makes the run-level series of flow exist (failures at 0) before
// its first run fails, and drops those of an unknown flow (empty name) once
// the flow is known, so no stale series keeps an alert firing.
func (m *Metrics) Started(flow string) {
	if flow != "" {
		for _, v := range []*prometheus.MetricVec{m.LastSuccess.MetricVec, m.LastAttempt.MetricVec, m.RestorableHi.MetricVec,
			m.BytesUploaded.MetricVec, m.ObjectsUpload.MetricVec, m.ObjectsSkipped.MetricVec, m.Skipped.MetricVec,
			m.Duration.MetricVec, m.Failures.MetricVec} {
			v.DeletePartialMatch(prometheus.Labels{"flow": ""})
		}
		m.mu.Lock()
		for k := range m.newest {
			if k[0] == "" {
				delete(m.newest, k)
			}
		}
		m.mu.Unlock()
	}
	m.Failures.WithLabelValues(flow, RunPartition)
}

// ObserveRun records the end of one agent run: its time, and whether it
// failed (every failed run counts once, whether or not it touched a
// partition).
func (m *Metrics) ObserveRun(flow string, failed bool) {
	m.Started(flow)
	m.LastAttempt.WithLabelValues(flow, RunPartition).Set(float64(m.now().Unix()))
	if failed {
		m.Failures.WithLabelValues(flow, RunPartition).Inc()
	}
}

// Observe records one backup run's results.
func (m *Metrics) Observe(flow string, results []*Result) {
	fenced, fork := 0.0, 0.0
	for _, r := range results {
		if errors.Is(r.Err, ErrFenced) {
			fenced = 1
		}
		if r.Fork != "" {
			fork = 1
		}
	}
	if len(results) > 0 {
		m.Fenced.WithLabelValues(flow).Set(fenced)
		m.Fork.WithLabelValues(flow).Set(fork)
	}
	for _, r := range results {
		p := strconv.Itoa(r.Partition)
		m.LastAttempt.WithLabelValues(flow, p).Set(float64(m.now().Unix()))
		switch {
		case r.Skipped != "":
			m.Skipped.WithLabelValues(flow, p, r.Skipped).Inc()
			if r.Skipped == SkipUnchanged {
				// The backup holds everything the partition does.
				m.mu.Lock()
				m.newest[[2]string{flow, p}] = restorable{r.Manifest.Epochs.Hi, m.now()}
				m.mu.Unlock()
			}
			continue
		case errors.Is(r.Err, ErrLocked):
			m.Skipped.WithLabelValues(flow, p, SkipLocked).Inc()
			continue
		case errors.Is(r.Err, ErrFenced):
			continue // flowkeep_backup_fenced says so
		}
		m.BytesUploaded.WithLabelValues(flow, p).Add(float64(r.BytesUploaded))
		m.ObjectsUpload.WithLabelValues(flow, p).Add(float64(r.ObjectsUploaded))
		m.ObjectsSkipped.WithLabelValues(flow, p).Add(float64(r.ObjectsSkipped))
		m.Duration.WithLabelValues(flow, p).Observe(r.Duration.Seconds())
		if r.Err != nil {
			m.Failures.WithLabelValues(flow, p).Inc()
			continue
		}
		m.LastSuccess.WithLabelValues(flow, p).Set(float64(r.Manifest.Created.Unix()))
		m.RestorableHi.WithLabelValues(flow, p).Set(float64(r.Manifest.Epochs.Hi))
		m.mu.Lock()
		m.newest[[2]string{flow, p}] = restorable{r.Manifest.Epochs.Hi, r.Manifest.Epochs.HiTime}
		m.mu.Unlock()
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
	// Retention, if set, prunes after every run (under the prune lock, as
	// Prune always does).
	Retention *PruneOptions
	// OnRun, if set, is called after every run (tests).
	OnRun func([]*Result, error)
	// CopyTo are locations the agent copies its backups to after each
	// run (see CopyTarget), exporting CopyMetrics if set.
	CopyTo      []*CopyTarget
	CopyMetrics *CopyMetrics

	mu   sync.Mutex
	flow string // the flow's name, for metric labels (read at the first run)
	runs int
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
	if a.Metrics != nil {
		a.Metrics.Watch(a.Dir)
	}
	a.CheckInterval(ctx)
	if a.flow == "" {
		if name, idx, err := flowInfo(ctx, a.Dir); err == nil {
			a.flow = name
			if a.Metrics != nil {
				a.Metrics.Started(name)
				a.Metrics.Known(name, idx)
			}
		}
	}
	opts := a.Options
	opts.SkipUnchanged = true
	// --take-over claims the flow once, at the agent's first run: claiming
	// it on every run would flip-flop with another agent told the same.
	opts.TakeOver = a.Options.TakeOver && a.runs == 0
	a.runs++
	results, err := BackupDir(ctx, a.Store, a.Dir, opts)
	if a.Metrics != nil {
		a.Metrics.Observe(a.flow, results)
	}
	var errs []error
	fenced, fork, tookOver := "", "", false
	for _, r := range results {
		if r.Fork != "" && fork == "" {
			fork = r.Fork
		}
		if r.Gate != nil && r.Gate.TookOver {
			tookOver = true
		}
		switch {
		case errors.Is(r.Err, ErrFenced):
			if fenced == "" {
				fenced = r.Err.Error()
			}
			errs = append(errs, r.Err)
			continue
		case r.Skipped == SkipRestored:
			a.Log.Info("skipped: restored and not run since (nothing new to back up)", "partition", r.Partition)
			continue
		case r.Skipped != "":
			a.Log.Info("skipped: unchanged since the latest backup", "partition", r.Partition, "latest", r.Manifest.ID,
				"epochs", fmt.Sprintf("%d..%d", r.Manifest.Epochs.Lo, r.Manifest.Epochs.Hi))
			continue
		case errors.Is(r.Err, ErrLocked):
			a.Log.Warn("skipped: the partition is locked", "partition", r.Partition, "reason", r.Err)
			continue
		case r.Err != nil:
			a.Log.Error("backup failed", "partition", r.Partition, "err", r.Err)
			errs = append(errs, r.Err)
			continue
		}
		a.Log.Info("backed up", "partition", r.Partition, "kind", r.Kind, "id", r.Manifest.ID,
			"epochs", fmt.Sprintf("%d..%d", r.Manifest.Epochs.Lo, r.Manifest.Epochs.Hi),
			"uploaded_bytes", r.BytesUploaded, "uploaded_objects", r.ObjectsUploaded, "skipped_objects", r.ObjectsSkipped,
			"duration", r.Duration.Round(time.Millisecond))
	}
	if tookOver {
		a.Log.Warn("took over: this machine's lineage now claims the flow's backups; the other machine's agent is fenced from its next run")
	}
	if fenced != "" {
		a.Log.Error("FENCED: not backing up", "reason", fenced)
	}
	if fork != "" {
		a.Log.Error("FORK: two machines are running this flow", "seen", fork)
	}
	// A run failed if it could not start (before any partition was
	// touched) or a partition's backup failed; a locked or fenced
	// partition is not a failure (fenced has its own metric), nor is a
	// directory that holds no partitions yet (a first boot: flowrun makes
	// them) or a run cut short because the agent stops.
	failed := false
	switch {
	case err != nil && len(results) == 0 && errors.Is(err, recovery.ErrNoPartitions):
		a.Log.Warn("nothing to back up yet: no recovery partitions in the directory (flowrun creates them at its first start)", "dir", a.Dir, "err", err)
		err = nil
	case err != nil && len(results) == 0:
		a.Log.Error("backup run failed", "err", err)
		failed = ctx.Err() == nil
	default:
		err = errors.Join(errs...) // a locked partition is not a failure
		for _, r := range results {
			if r.Err != nil && !errors.Is(r.Err, ErrFenced) && !errors.Is(r.Err, ErrLocked) {
				failed = ctx.Err() == nil
			}
		}
	}
	if a.Metrics != nil {
		a.Metrics.ObserveRun(a.flow, failed)
	}
	if a.Retention != nil && ctx.Err() == nil {
		a.retain(ctx)
	}
	a.queueCopies(results)
	if a.OnRun != nil {
		a.OnRun(results, err)
	}
	return results, err
}

// retain prunes to the retention policy after a run.
func (a *Agent) retain(ctx context.Context) {
	po := *a.Retention
	if po.Auth == nil && a.Options.Recipients != nil {
		// The recipients it encrypts to tell its backups from forgeries.
		auth, err := NewIndexAuth(a.Options.Recipients, nil)
		if err != nil {
			a.Log.Error("retention failed", "err", err)
			return
		}
		po.Auth = auth
	}
	res, err := Prune(ctx, a.Store, po)
	switch {
	case errors.Is(err, ErrLocked):
		a.Log.Warn("retention skipped: a backup or another prune holds the lock", "reason", err)
	case err != nil:
		a.Log.Error("retention failed", "err", err)
		if a.Metrics != nil {
			a.Metrics.PruneFailures.Inc()
		}
	case len(res.DeletedManifests) > 0 || res.DeletedChunks > 0:
		a.Log.Info("retention pruned", "deleted_backups", len(res.DeletedManifests), "deleted_chunks", res.DeletedChunks,
			"deleted_bytes", res.DeletedBytes, "kept_backups", res.KeptManifests)
	}
}

// flowInfo reads the name of the flow whose partitions are in dir, and
// their indexes.
func flowInfo(ctx context.Context, dir string) (string, []int, error) {
	ps, err := recovery.Find(ctx, dir, true)
	if err != nil || len(ps) == 0 {
		return "", nil, fmt.Errorf("no partitions in %s: %v", dir, err)
	}
	defer recovery.CloseAll(ps)
	v, err := recovery.ReadView(ctx, ps[0].DB)
	if err != nil {
		return "", nil, err
	}
	var idx []int
	for _, p := range ps {
		idx = append(idx, int(p.Index))
	}
	return v.FlowName, idx, nil
}

// Run backs up once now, then on every tick of the schedule until ctx ends.
// A run still going when the next tick comes makes that tick skip.
func (a *Agent) Run(ctx context.Context) error {
	if a.Log == nil {
		a.Log = slog.Default()
	}
	// A killed agent leaves its half-built delta files behind.
	if gone, err := SweepTemp(a.Options.TempDir); err != nil {
		a.Log.Warn("could not remove a leftover delta file", "err", err)
	} else if len(gone) > 0 {
		a.Log.Info("removed delta files a killed backup left behind", "files", len(gone), "dir", filepath.Dir(gone[0]))
	}
	defer a.startCopies(ctx)()
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
