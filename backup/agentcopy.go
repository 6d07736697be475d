package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CopyTarget is a second location the agent copies its backups to
// (--copy-to): after every run that made a new backup, or refreshed a
// heartbeat of an idle partition, and after its retention, the agent
// copies what the location lacks of the partitions it backs up (Copy,
// limited to its flow and partitions). Copies run beside the backups, not
// in their way: a long first copy delays no backup, and a run that ends
// while a copy is going makes one more copy follow it. A failed copy fails
// no backup run: it is logged and counted
// (flowkeep_copy_failures_total), and the next run copies again.
type CopyTarget struct {
	Store Store
	// Options are the copy's settings; the agent sets FlowUID and
	// Partitions.
	Options CopyOptions

	mu        sync.Mutex
	trigger   chan struct{}
	uid       string
	parts     []int
	waiting   time.Time // the oldest new backup no copy started since it was made
	inflight  time.Time // what the running copy covers
	left      time.Time // the last finished copy's Behind
	retry     bool      // the last copy failed, or left backups behind
	queued    bool      // a copy was queued once
	attempted bool      // a copy ran once
}

// Name names the target in metrics and logs (its URL).
func (t *CopyTarget) Name() string { return t.Store.String() }

// Lag is how long ago the oldest backup of the agent's partitions that
// the target lacks was taken, as far as the agent knows (0 when it holds
// them all); ok is false before the first copy was queued.
func (t *CopyTarget) Lag(now time.Time) (float64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.queued {
		return 0, false
	}
	oldest := time.Time{}
	for _, at := range []time.Time{t.waiting, t.inflight, t.left} {
		if !at.IsZero() && (oldest.IsZero() || at.Before(oldest)) {
			oldest = at
		}
	}
	if oldest.IsZero() {
		return 0, true
	}
	return max(0, now.Sub(oldest).Seconds()), true
}

// queue asks for a copy of flow uid's partitions, newest being the
// oldest backup the run made (zero if none); it says whether a copy was
// queued.
func (t *CopyTarget) queue(uid string, parts []int, newest time.Time, refreshed bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if newest.IsZero() && !refreshed && !t.retry && t.attempted {
		return false
	}
	t.uid, t.parts, t.queued = uid, parts, true
	if !newest.IsZero() && (t.waiting.IsZero() || newest.Before(t.waiting)) {
		t.waiting = newest
	}
	select {
	case t.channel() <- struct{}{}:
	default: // one is queued already: it copies this run's backups too
	}
	return true
}

// channel is the target's trigger; t.mu is held.
func (t *CopyTarget) channel() chan struct{} {
	if t.trigger == nil {
		t.trigger = make(chan struct{}, 1)
	}
	return t.trigger
}

// CopyMetrics are the Prometheus metrics of the agent's copies, labelled
// by target (to: its URL).
type CopyMetrics struct {
	Failures      *prometheus.CounterVec
	LastSuccess   *prometheus.GaugeVec
	CopiedBytes   *prometheus.CounterVec
	CopiedObjects *prometheus.CounterVec

	mu      sync.Mutex
	targets []*CopyTarget
	now     func() time.Time
}

// CopyMetricNames lists every metric NewCopyMetrics registers.
var CopyMetricNames = []string{
	"flowkeep_copy_lag_seconds", "flowkeep_copy_failures_total", "flowkeep_copy_last_success_timestamp_seconds",
	"flowkeep_copy_copied_bytes_total", "flowkeep_copy_copied_objects_total",
}

var copyLagDesc = prometheus.NewDesc("flowkeep_copy_lag_seconds",
	"How long ago the oldest backup of the agent's partitions that the copy location lacks was taken (read at scrape time); 0 when the copy holds them all.", []string{"to"}, nil)

// NewCopyMetrics registers the copy metrics with reg.
func NewCopyMetrics(reg prometheus.Registerer) *CopyMetrics {
	to := []string{"to"}
	m := &CopyMetrics{
		Failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_copy_failures_total",
			Help: "Copies to each --copy-to location that failed (could not read, write or lock; a location of another scheme)."}, to),
		LastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowkeep_copy_last_success_timestamp_seconds",
			Help: "Unix time the last copy to each --copy-to location finished without error."}, to),
		CopiedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_copy_copied_bytes_total",
			Help: "Bytes written to each --copy-to location (as stored)."}, to),
		CopiedObjects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowkeep_copy_copied_objects_total",
			Help: "Objects written to each --copy-to location (chunks, manifests, pointers, registry events)."}, to),
		now: time.Now,
	}
	reg.MustRegister(m.Failures, m.LastSuccess, m.CopiedBytes, m.CopiedObjects, copyLagCollector{m})
	return m
}

// Track makes t's series exist (counters at 0) and its lag exported.
func (m *CopyMetrics) Track(t *CopyTarget) {
	m.mu.Lock()
	m.targets = append(m.targets, t)
	m.mu.Unlock()
	m.Failures.WithLabelValues(t.Name())
	m.CopiedBytes.WithLabelValues(t.Name())
	m.CopiedObjects.WithLabelValues(t.Name())
}

// SetNow sets the clock the lag is read with (tests).
func (m *CopyMetrics) SetNow(now func() time.Time) {
	m.mu.Lock()
	m.now = now
	m.mu.Unlock()
}

type copyLagCollector struct{ m *CopyMetrics }

func (c copyLagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- copyLagDesc }
func (c copyLagCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	targets, now := c.m.targets, c.m.now
	c.m.mu.Unlock()
	for _, t := range targets {
		if lag, ok := t.Lag(now()); ok {
			ch <- prometheus.MustNewConstMetric(copyLagDesc, prometheus.GaugeValue, lag, t.Name())
		}
	}
}

// queueCopies asks every copy target for a copy of what the run results
// made (see CopyTarget).
func (a *Agent) queueCopies(results []*Result) {
	if len(a.CopyTo) == 0 {
		return
	}
	uid, newest, refreshed := "", time.Time{}, false
	var parts []int
	for _, r := range results {
		parts = append(parts, r.Partition)
		if r.Manifest == nil {
			continue
		}
		uid = r.Manifest.Flow.UID
		switch {
		case r.Skipped == SkipUnchanged:
			refreshed = true // its heartbeat
		case r.Err == nil && r.Skipped == "":
			if c := r.Manifest.Created; newest.IsZero() || c.Before(newest) {
				newest = c
			}
		}
	}
	if uid == "" {
		return // no partition of a known flow: nothing to copy
	}
	sort.Ints(parts)
	for _, t := range a.CopyTo {
		t.queue(uid, parts, newest, refreshed)
	}
}

// startCopies runs each copy target's copies until ctx ends; the returned
// function waits for them to stop.
func (a *Agent) startCopies(ctx context.Context) func() {
	var wg sync.WaitGroup
	for _, t := range a.CopyTo {
		t.mu.Lock()
		trigger := t.channel()
		t.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-trigger:
					a.copyTo(ctx, t)
				}
			}
		}()
	}
	return wg.Wait
}

// CopyNow runs the copies queued since the last ones, one target after
// the other, and returns when they are done (Run runs them beside the
// backups; tests call this after RunOnce).
func (a *Agent) CopyNow(ctx context.Context) {
	for _, t := range a.CopyTo {
		t.mu.Lock()
		trigger := t.channel()
		t.mu.Unlock()
		select {
		case <-trigger:
			a.copyTo(ctx, t)
		default:
		}
	}
}

// copyTo copies the partitions last queued to t, and records how it went.
func (a *Agent) copyTo(ctx context.Context, t *CopyTarget) {
	t.mu.Lock()
	uid, parts := t.uid, t.parts
	t.inflight, t.waiting, t.attempted = t.waiting, time.Time{}, true
	t.mu.Unlock()
	o := t.Options
	o.FlowUID, o.Partitions = uid, parts
	res, err := Copy(ctx, a.Store, t.Store, o)
	t.mu.Lock()
	if err == nil {
		t.left, t.retry = res.Behind, !res.Behind.IsZero()
	} else {
		if t.waiting.IsZero() || !t.inflight.IsZero() && t.inflight.Before(t.waiting) {
			t.waiting = t.inflight
		}
		t.retry = true
	}
	t.inflight = time.Time{}
	t.mu.Unlock()
	log, m, name := a.Log, a.CopyMetrics, t.Name()
	if res != nil && m != nil {
		m.CopiedBytes.WithLabelValues(name).Add(float64(res.CopiedBytes))
		m.CopiedObjects.WithLabelValues(name).Add(float64(res.CopiedObjects))
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return // the agent stops
	case errors.Is(err, ErrLocked):
		log.Warn("copy postponed: the copy location is locked (a prune runs there); the next run copies", "to", name, "reason", err)
		return
	case err != nil:
		log.Error("copy failed", "to", name, "err", err)
		if m != nil {
			m.Failures.WithLabelValues(name).Inc()
		}
		return
	}
	if m != nil {
		m.LastSuccess.WithLabelValues(name).Set(float64(m.now().Unix()))
	}
	switch {
	case res.CopiedBackups > 0:
		log.Info("copied", "to", name, "backups", res.CopiedBackups, "objects", res.CopiedObjects, "bytes", res.CopiedBytes,
			"skipped_objects", res.SkippedObjects)
	case res.CopiedObjects > 0: // pointers, heartbeats of idle partitions
		log.Debug("copied", "to", name, "backups", res.CopiedBackups, "objects", res.CopiedObjects, "bytes", res.CopiedBytes,
			"skipped_objects", res.SkippedObjects)
	}
	if n := len(res.NotCopied); n > 0 {
		kinds := map[string]int{}
		for _, nc := range res.NotCopied {
			kinds[nc.Kind]++
		}
		var sum []string
		for k, c := range kinds {
			sum = append(sum, fmt.Sprintf("%d %s", c, k))
		}
		sort.Strings(sum)
		first := res.NotCopied[0]
		log.Warn("some backups were not copied (flowbackup copy says which and why)", "to", name, "not_copied", strings.Join(sum, ", "),
			"first", first.Key, "reason", first.Reason)
	}
}
