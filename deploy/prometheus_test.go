package deploy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/internal/testserver"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

// exported runs a real agent over a real flow's partitions, once backing
// up and once against a destination that fails, and returns every series
// it exports: metric name -> label name -> values seen.
func exported(t *testing.T) map[string]map[string][]string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	if err := recovery.Init(ctx, dir, 2); err != nil {
		t.Fatal(err)
	}
	st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "wordcount", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Begin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	var rows []recovery.Row
	for i := 0; i < 50; i++ {
		rows = append(rows, recovery.Row{Step: "wc.count", Key: recovery.StateKey(fmt.Sprint("k", i)), Epoch: 1, Value: []byte("v")})
	}
	if err := st.Commit(ctx, 0, 2, rows); err != nil {
		t.Fatal(err)
	}
	if err := st.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st.Close()
	sched, _ := backup.ParseSchedule("*/5 * * * *")
	reg := prometheus.NewRegistry()
	m := backup.NewMetrics(reg)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// It copies to a second location (--copy-to), and audits on a
	// schedule (--verify-schedule).
	source := memstore.New()
	copyTo := &backup.CopyTarget{Store: named{memstore.New(), "mem://copy"}}
	ok := &backup.Agent{Store: source, Dir: dir, Schedule: sched, Spec: "*/5 * * * *", Metrics: m, Log: log,
		Retention: &backup.PruneOptions{KeepLast: 1, Grace: backup.DefaultGrace},
		CopyTo:    []*backup.CopyTarget{copyTo}, CopyMetrics: backup.NewCopyMetrics(reg)}
	ok.CopyMetrics.Track(copyTo)
	if _, err := ok.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	ok.CopyNow(ctx)
	audits := &restore.Auditor{Store: source, Schedule: sched, Options: restore.VerifyOptions{Sample: 50}, Metrics: restore.NewAuditMetrics(reg), Log: log}
	if _, err := audits.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	failing := &backup.Agent{Store: brokenStore{memstore.New()}, Dir: dir, Schedule: sched, Spec: "*/5 * * * *", Metrics: m, Log: log}
	if _, err := failing.RunOnce(ctx); err == nil {
		t.Fatal("a run against a broken destination succeeded")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string][]string{}
	for _, mf := range mfs {
		name := mf.GetName()
		names := []string{name}
		if mf.GetType().String() == "HISTOGRAM" {
			names = []string{name + "_bucket", name + "_sum", name + "_count"}
		}
		for _, n := range names {
			if out[n] == nil {
				out[n] = map[string][]string{}
			}
			for _, s := range mf.GetMetric() {
				for _, l := range s.GetLabel() {
					out[n][l.GetName()] = append(out[n][l.GetName()], l.GetValue())
				}
				if strings.HasSuffix(n, "_bucket") {
					out[n]["le"] = append(out[n]["le"], "+Inf")
				}
			}
		}
	}
	return out
}

// named is a store of another name (a copy's source and destination
// differ).
type named struct {
	backup.Store
	name string
}

func (n named) String() string { return n.name }

// brokenStore refuses every write (a wrong bucket, a revoked key).
type brokenStore struct{ backup.Store }

func (brokenStore) Put(context.Context, string, []byte) error         { return backup.ErrAccess }
func (brokenStore) PutIfAbsent(context.Context, string, []byte) error { return backup.ErrAccess }
func (brokenStore) List(context.Context, string, string, func(backup.ObjectInfo) error) error {
	return backup.ErrAccess
}

var seriesRef = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$`)
var labelRef = regexp.MustCompile(`\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"\s*,?`)

// The alert rules' tests feed the rules the series the agent really
// exports: every name is one backup.MetricNames lists (or the scrape's
// own up), every label one the agent sets on it (or job and instance,
// which Prometheus adds), with values of the kind the agent gives.
func TestAlertRuleTests_UseTheSeriesTheAgentExports(t *testing.T) {
	real := exported(t)
	names := agentMetricNames
	for _, n := range names {
		if real[n] == nil && real[n+"_bucket"] == nil {
			t.Errorf("%s is in backup.MetricNames but a real agent did not export it", n)
		}
	}
	files, _ := filepath.Glob("prometheus/*_test.yaml")
	if len(files) == 0 {
		t.Fatal("no rule tests in prometheus/")
	}
	for _, f := range files {
		var doc struct {
			Tests []struct {
				InputSeries []struct {
					Series string `yaml:"series"`
				} `yaml:"input_series"`
			} `yaml:"tests"`
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		n := 0
		for _, tc := range doc.Tests {
			for _, is := range tc.InputSeries {
				n++
				m := seriesRef.FindStringSubmatch(is.Series)
				if m == nil {
					t.Errorf("%s: series %q: want name{labels}", f, is.Series)
					continue
				}
				name, labels := m[1], map[string]string{}
				for _, l := range labelRef.FindAllStringSubmatch(m[2], -1) {
					labels[l[1]] = l[2]
				}
				if name == "up" {
					if labels["job"] == "" || labels["instance"] == "" {
						t.Errorf("%s: %s: up without job and instance", f, is.Series)
					}
					continue
				}
				if !slices.Contains(names, strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")) {
					t.Errorf("%s: %s is not a metric the agent exports (backup.MetricNames, CopyMetricNames, restore.AuditMetricNames)", f, name)
					continue
				}
				have := real[name]
				var want []string
				for l := range have {
					want = append(want, l)
				}
				sort.Strings(want)
				for l, v := range labels {
					if l == "job" || l == "instance" {
						continue
					}
					vals, ok := have[l]
					if !ok {
						t.Errorf("%s: %s has label %s; the agent's %s has %v", f, is.Series, l, name, want)
						continue
					}
					if l == "partition" && v != backup.RunPartition && !regexp.MustCompile(`^[0-9]+$`).MatchString(v) {
						t.Errorf("%s: %s: partition %q is neither an index nor %q", f, is.Series, v, backup.RunPartition)
					}
					if l == "partition" && v == backup.RunPartition && !slices.Contains(vals, v) {
						t.Errorf("%s: %s: the agent has no partition=%q series of %s", f, is.Series, v, name)
					}
				}
				for _, l := range want {
					if _, ok := labels[l]; !ok {
						t.Errorf("%s: %s lacks label %s, which the agent's %s has", f, is.Series, l, name)
					}
				}
			}
		}
		if n == 0 {
			t.Errorf("%s has no input series", f)
		}
	}
}

// promtool, built by test.sh from the module proxy, checks the rules and
// the Prometheus configurations and runs the rules' tests.
func TestAlertRules_PromtoolTests(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		testserver.Missing(t, fmt.Errorf("promtool: %w", err))
	}
	for _, args := range [][]string{
		{"check", "rules", "flowkeep-alerts.yaml"},
		append([]string{"check", "config", "--syntax-only"}, mustGlob(t, "prometheus/prometheus*.yml", "prometheus/")...),
		append([]string{"test", "rules"}, mustGlob(t, "prometheus/*_test.yaml", "prometheus/")...),
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil && args[1] == "config" && strings.Contains(string(out), "field kubernetes_sd_configs not found") {
			// Debian's promtool (test.sh takes it from the prometheus
			// package) is built without Kubernetes service discovery:
			// check the rest of that file with a static target in its
			// place, and its discovery block by reading it.
			checkWithoutKubernetesSD(t, promtool, args)
			continue
		}
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		} else {
			t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
		}
	}
}

// checkWithoutKubernetesSD runs promtool check config (args) on copies of
// the configurations whose kubernetes_sd_configs are replaced by a static
// target, after checking that each such block asks for pods.
func checkWithoutKubernetesSD(t *testing.T, promtool string, args []string) {
	t.Helper()
	dir := t.TempDir()
	files, _ := filepath.Glob("prometheus/*")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".yml") {
			var cfg struct {
				Scrape []struct {
					Job string `yaml:"job_name"`
					K8s []struct {
						Role string `yaml:"role"`
					} `yaml:"kubernetes_sd_configs"`
				} `yaml:"scrape_configs"`
			}
			if err := yaml.Unmarshal(b, &cfg); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			for _, sc := range cfg.Scrape {
				for _, k := range sc.K8s {
					if k.Role != "pod" {
						t.Errorf("%s: job %s discovers role %q, want pod", f, sc.Job, k.Role)
					}
				}
			}
			b = regexp.MustCompile(`(?m)^(\s*)kubernetes_sd_configs:\n\s*- role: pod\n`).ReplaceAll(b, []byte("${1}static_configs:\n${1}  - targets: [\"localhost:9464\"]\n"))
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool %s (Kubernetes discovery replaced by a static target: this promtool has none): %v\n%s", strings.Join(args, " "), err, out)
	} else {
		t.Logf("promtool %s, with a static target for Kubernetes discovery (this promtool has none):\n%s", strings.Join(args, " "), out)
	}
}

func mustGlob(t *testing.T, pattern, trim string) []string {
	t.Helper()
	m, _ := filepath.Glob(pattern)
	if len(m) == 0 {
		t.Fatalf("nothing matches %s", pattern)
	}
	for i := range m {
		m[i] = strings.TrimPrefix(m[i], trim)
	}
	return m
}
