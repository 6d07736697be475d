// Package deploy holds flowkeep's deployment files: systemd units,
// Kubernetes manifests, a Grafana dashboard and Prometheus alert rules.
// This test checks them against the code: every flag they pass exists,
// every metric they query is exported, and the cluster manifest's
// addresses, process ids and volumes agree.
package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/flowbackup"
	"github.com/flowkeep/flowkeep/flowrun"
	"github.com/flowkeep/flowkeep/restore"
)

// checkCommand fails unless args (a flowrun or flowbackup command line
// after the binary's name) names a real subcommand with real flags.
func checkCommand(t *testing.T, where, bin string, args []string) {
	t.Helper()
	var root *cobra.Command
	switch filepath.Base(bin) {
	case "flowrun":
		root = flowrun.NewRootCommand(io.Discard, io.Discard, flowrun.BuiltinFlows()...)
	case "flowbackup":
		root = flowbackup.NewRootCommand(io.Discard, io.Discard)
	default:
		t.Fatalf("%s: unknown binary %q", where, bin)
	}
	cmd, rest, err := root.Find(args)
	if err != nil || cmd == root {
		t.Errorf("%s: %s %v is not a subcommand (%v)", where, bin, args, err)
		return
	}
	for _, a := range rest {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if cmd.Flags().Lookup(name) == nil && cmd.InheritedFlags().Lookup(name) == nil {
			t.Errorf("%s: %s %s has no flag --%s", where, bin, cmd.Name(), name)
		}
	}
}

var metricRef = regexp.MustCompile(`flowkeep_[a-z_]+`)

// checkMetrics fails for a metric the agent does not export.
// agentMetricNames are every metric flowbackup agent exports: its
// backups', its copies' (--copy-to) and its audits' (--verify-schedule).
var agentMetricNames = slices.Concat(backup.MetricNames, backup.CopyMetricNames, restore.AuditMetricNames)

func checkMetrics(t *testing.T, where, expr string) {
	t.Helper()
	for _, m := range metricRef.FindAllString(expr, -1) {
		base := m
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(m, suf); ok && slices.Contains(agentMetricNames, b) {
				base = b
			}
		}
		if !slices.Contains(agentMetricNames, base) {
			t.Errorf("%s: %q queries %s, which flowbackup agent does not export", where, expr, m)
		}
	}
}

func TestAlertRules_QueryExportedMetricsAndSayWhat(t *testing.T) {
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	b, err := os.ReadFile("prometheus/flowkeep-alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			names = append(names, r.Alert)
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v lacks an alert name, expr, severity or summary", r)
			}
			checkMetrics(t, "alert "+r.Alert, r.Expr)
		}
	}
	for _, want := range []string{"FlowkeepRPOTooHigh", "FlowkeepBackupFailing", "FlowkeepNoBackupAttempt", "FlowkeepTwoMachinesRunOneFlow", "FlowkeepBackupFenced",
		"FlowkeepCopyLagging", "FlowkeepCopyFailing", "FlowkeepAuditFoundProblems", "FlowkeepAuditOverdue"} {
		if !slices.Contains(names, want) {
			t.Errorf("no alert %s", want)
		}
	}
}

func TestGrafanaDashboard_QueriesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile("grafana/flowkeep-backups.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || len(d.Panels) < 4 {
		t.Fatalf("dashboard %q has %d panels", d.Title, len(d.Panels))
	}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			checkMetrics(t, "panel "+p.Title, tg.Expr)
		}
	}
}

// unit parses a systemd unit into section -> key -> values.
func unit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string][]string{}
	sec := ""
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			sec = strings.Trim(l, "[]")
			out[sec] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || sec == "" {
				t.Fatalf("%s: bad line %q", path, l)
			}
			out[sec][k] = append(out[sec][k], v)
		}
	}
	return out
}

func TestSystemdUnits_RestoreBeforeFlowrunAndRealFlags(t *testing.T) {
	units, _ := filepath.Glob("systemd/*.service")
	timers, _ := filepath.Glob("systemd/*.timer")
	parsed := map[string]map[string]map[string][]string{}
	for _, u := range append(units, timers...) {
		parsed[filepath.Base(u)] = unit(t, u)
		for _, ex := range parsed[filepath.Base(u)]["Service"]["ExecStart"] {
			f := strings.Fields(ex)
			checkCommand(t, u, f[0], f[1:])
		}
	}
	for _, want := range []string{"flowkeep-restore.service", "flowrun.service", "flowrun-batch.service", "flowrun-batch.timer", "flowbackup-agent.service"} {
		if parsed[want] == nil {
			t.Fatalf("no systemd/%s", want)
		}
	}
	restore := parsed["flowkeep-restore.service"]
	if restore["Service"]["Type"][0] != "oneshot" {
		t.Errorf("the restore unit must be a oneshot: %v", restore)
	}
	ex := restore["Service"]["ExecStart"][0]
	if !strings.Contains(ex, "--if-empty") || !strings.Contains(ex, "--if-backups-exist") {
		t.Errorf("the restore unit must be safe on every boot: %s", ex)
	}
	env := envFile(t, "systemd/flowkeep.env")
	for _, name := range []string{"flowrun.service", "flowrun-batch.service"} {
		run := parsed[name]
		if !strings.Contains(strings.Join(restore["Unit"]["Before"], " "), name) ||
			!strings.Contains(strings.Join(run["Unit"]["Requires"], " "), "flowkeep-restore.service") ||
			!strings.Contains(strings.Join(run["Unit"]["After"], " "), "flowkeep-restore.service") {
			t.Errorf("%s must start after the restore: %v", name, run["Unit"])
		}
		// A first start creates the partitions: --init-partitions, from
		// the environment file.
		if !strings.Contains(run["Service"]["ExecStart"][0], "--init-partitions") && env["FLOWRUN_INIT_PARTITIONS"] == "" {
			t.Errorf("%s never creates partitions: a fresh machine without backups cannot start", name)
		}
		if run["Service"]["EnvironmentFile"][0] != "/etc/flowkeep/flowkeep.env" {
			t.Errorf("%s reads %v", name, run["Service"]["EnvironmentFile"])
		}
	}
	// A flow that ends runs as a oneshot on a timer (never Restart=, which
	// reruns a finished flow or gives up); one that tails is a service
	// restarted on failure.
	batch, tail := parsed["flowrun-batch.service"]["Service"], parsed["flowrun.service"]["Service"]
	timer := parsed["flowrun-batch.timer"]["Timer"]
	if batch["Type"][0] != "oneshot" || len(batch["Restart"]) > 0 || (len(timer["Unit"]) > 0 && timer["Unit"][0] != "flowrun-batch.service") || len(timer["OnCalendar"]) == 0 {
		t.Errorf("flowrun-batch: a oneshot started by flowrun-batch.timer on the wall clock (a cluster's machines start together): %v %v", batch, timer)
	}
	if len(tail["Type"]) > 0 || tail["Restart"][0] != "on-failure" {
		t.Errorf("flowrun.service: a long-running service restarted on failure: %v", tail)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd; test.sh installs it when run as root): units parsed, not verified")
	}
	// systemd-analyze verify wants the binaries where ExecStart says:
	// check copies that point at stand-ins.
	dir := t.TempDir()
	stand := filepath.Join(dir, "bin")
	os.Mkdir(stand, 0o755)
	for _, b := range []string{"flowrun", "flowbackup"} {
		os.WriteFile(filepath.Join(stand, b), []byte("#!/bin/sh\n"), 0o755)
	}
	var copies []string
	for _, u := range append(units, timers...) {
		b, _ := os.ReadFile(u)
		c := filepath.Join(dir, filepath.Base(u))
		os.WriteFile(c, bytes.ReplaceAll(b, []byte("/usr/local/bin/"), []byte(stand+"/")), 0o644)
		copies = append(copies, c)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, copies...)...)
	out, err := cmd.CombinedOutput()
	// Only findings about our files count (not the user flowkeep this
	// machine lacks, nor a container's missing bus); verify prints unknown
	// keys and bad values as warnings, at its default log level.
	for _, l := range strings.Split(string(out), "\n") {
		ours := strings.Contains(l, dir)
		for _, u := range copies {
			ours = ours || strings.Contains(l, filepath.Base(u))
		}
		if ours && !strings.Contains(l, "User=") && !strings.Contains(l, "Group=") &&
			!strings.Contains(l, "Failed to connect") && !strings.Contains(l, "Failed to initialize") {
			t.Errorf("systemd-analyze verify: %s", l)
		}
	}
	t.Logf("systemd-analyze verify (exit %v): %s", err, out)
}

// envFile reads a systemd environment file.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			out[k] = v
		}
	}
	return out
}

type k8sDoc struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec yaml.Node         `yaml:"spec"`
}

type container struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		ValueFrom struct {
			FieldRef struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		ContainerPort int `yaml:"containerPort"`
	} `yaml:"ports"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

func (c container) mount(name string) string {
	for _, m := range c.VolumeMounts {
		if m.Name == name {
			return m.MountPath
		}
	}
	return ""
}

func (c container) flag(name string) string {
	for i, a := range c.Args {
		if a == "--"+name && i+1 < len(c.Args) {
			return c.Args[i+1]
		}
	}
	return ""
}

func docs(t *testing.T, path string) []k8sDoc {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []k8sDoc
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var d k8sDoc
		if err := dec.Decode(&d); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, d)
	}
	return out
}

// The StatefulSet of a P-process cluster (P=3): --addresses names every
// pod by its stable DNS name on the mesh port, each process's id is its
// pod ordinal, restore takes its share of P, and every container that
// needs the partitions mounts the one volume the template claims.
func TestKubernetes_ClusterAddressesIdsAndVolumesAgree(t *testing.T) {
	var sts struct {
		ServiceName string `yaml:"serviceName"`
		Replicas    int    `yaml:"replicas"`
		Template    struct {
			Spec struct {
				InitContainers []container `yaml:"initContainers"`
				Containers     []container `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
		} `yaml:"volumeClaimTemplates"`
	}
	var svc struct {
		ClusterIP string `yaml:"clusterIP"`
		Ports     []struct {
			Name string `yaml:"name"`
			Port int    `yaml:"port"`
		} `yaml:"ports"`
	}
	var stsName, config string
	for _, d := range docs(t, "kubernetes/flowkeep.yaml") {
		switch d.Kind {
		case "StatefulSet":
			stsName = d.Metadata.Name
			if err := d.Spec.Decode(&sts); err != nil {
				t.Fatal(err)
			}
		case "Service":
			if err := d.Spec.Decode(&svc); err != nil {
				t.Fatal(err)
			}
		case "ConfigMap":
			config = d.Data["flowbackup.yaml"]
		}
	}
	p := sts.Replicas
	if p < 2 || stsName == "" || svc.ClusterIP != "None" {
		t.Fatalf("want a StatefulSet of several pods behind a headless Service: replicas %d, service clusterIP %q", p, svc.ClusterIP)
	}
	mesh := 0
	for _, sp := range svc.Ports {
		if sp.Name == "mesh" {
			mesh = sp.Port
		}
	}
	byName := map[string]container{}
	for _, c := range append(sts.Template.Spec.InitContainers, sts.Template.Spec.Containers...) {
		byName[c.Name] = c
		checkCommand(t, "container "+c.Name, c.Command[0], c.Args)
	}
	run, restore, agent := byName["flowrun"], byName["restore"], byName["backup-agent"]
	var want []string
	for i := 0; i < p; i++ {
		want = append(want, fmt.Sprintf("%s-%d.%s:%d", stsName, i, sts.ServiceName, mesh))
	}
	if got := run.flag("addresses"); got != strings.Join(want, ",") {
		t.Errorf("--addresses %q, want %q", got, strings.Join(want, ","))
	}
	if run.flag("listen") != fmt.Sprintf(":%d", mesh) || len(run.Ports) == 0 || run.Ports[0].ContainerPort != mesh {
		t.Errorf("flowrun listens on %q, port %v; the mesh port is %d", run.flag("listen"), run.Ports, mesh)
	}
	for _, c := range []container{run, restore} {
		id := ""
		for _, e := range c.Env {
			if e.Name == "PROCESS_ID" {
				id = e.ValueFrom.FieldRef.FieldPath
			}
		}
		if id != "metadata.labels['apps.kubernetes.io/pod-index']" || c.flag("process-id") != "$(PROCESS_ID)" {
			t.Errorf("%s: the process id must be the pod ordinal (got env %q, --process-id %q)", c.Name, id, c.flag("process-id"))
		}
	}
	if restore.flag("processes") != fmt.Sprint(p) {
		t.Errorf("restore --processes %q, want %d", restore.flag("processes"), p)
	}
	// A first start (every volume empty, no backups) creates the
	// partitions: the pods agree on one flow, each creates its share.
	if n := run.flag("init-partitions"); n == "" || n == "0" {
		t.Errorf("flowrun has no --init-partitions: a new cluster never starts")
	}
	// A StatefulSet restarts a container that exits, even with 0: only a
	// flow that tails belongs in it.
	if in := run.flag("input"); !strings.Contains(in, "tail=true") {
		t.Errorf("the StatefulSet runs a flow that ends (--input %q): it would be restarted forever; run it as the CronJob", in)
	}
	vol := sts.VolumeClaimTemplates[0].Metadata.Name
	dir := run.mount(vol)
	if dir == "" || run.flag("recovery-dir") != dir || restore.mount(vol) != dir || restore.flag("to") != dir || agent.mount(vol) != dir {
		t.Errorf("the partitions volume %q: flowrun mounts it at %q with -r %q, restore at %q --to %q, agent at %q",
			vol, dir, run.flag("recovery-dir"), restore.mount(vol), restore.flag("to"), agent.mount(vol))
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(config), &cfg); err != nil || cfg["recovery_dir"] != dir {
		t.Errorf("the ConfigMap's recovery_dir %v is not the partitions' mount %q (%v)", cfg["recovery_dir"], dir, err)
	}
	// The CronJob alternative mounts pod 0's claim, as the StatefulSet
	// names it.
	for _, d := range docs(t, "kubernetes/backup-cronjob.yaml") {
		if d.Kind != "CronJob" {
			continue
		}
		var b bytes.Buffer
		yaml.NewEncoder(&b).Encode(&d.Spec)
		if want := fmt.Sprintf("claimName: %s-%s-0", vol, stsName); !strings.Contains(b.String(), want) {
			t.Errorf("the CronJob does not mount %s", want)
		}
	}
}

// The CronJob of a flow that ends: restore, then the flow, then a backup,
// each to completion and in that order (restore and flowrun are init
// containers), on one volume; a first start creates the partitions; runs
// never overlap; a pod of each run is the same machine to the lineage.
func TestKubernetes_BatchCronJobRestoresRunsThenBacksUp(t *testing.T) {
	var cj struct {
		ConcurrencyPolicy string `yaml:"concurrencyPolicy"`
		JobTemplate       struct {
			Spec struct {
				Template struct {
					Spec struct {
						RestartPolicy  string      `yaml:"restartPolicy"`
						InitContainers []container `yaml:"initContainers"`
						Containers     []container `yaml:"containers"`
						Volumes        []struct {
							Name string `yaml:"name"`
							PVC  struct {
								ClaimName string `yaml:"claimName"`
							} `yaml:"persistentVolumeClaim"`
						} `yaml:"volumes"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		} `yaml:"jobTemplate"`
	}
	var pvc, config string
	found := false
	for _, d := range docs(t, "kubernetes/flowkeep-batch.yaml") {
		switch d.Kind {
		case "CronJob":
			found = true
			if err := d.Spec.Decode(&cj); err != nil {
				t.Fatal(err)
			}
		case "PersistentVolumeClaim":
			pvc = d.Metadata.Name
		case "ConfigMap":
			config = d.Data["flowbackup.yaml"]
		}
	}
	if !found {
		t.Fatal("no CronJob in kubernetes/flowkeep-batch.yaml")
	}
	spec := cj.JobTemplate.Spec.Template.Spec
	if cj.ConcurrencyPolicy != "Forbid" || spec.RestartPolicy == "Always" {
		t.Errorf("runs share the partitions: concurrencyPolicy %q, restartPolicy %q", cj.ConcurrencyPolicy, spec.RestartPolicy)
	}
	var steps []string
	all := append(spec.InitContainers, spec.Containers...)
	for _, c := range all {
		checkCommand(t, "container "+c.Name, c.Command[0], c.Args)
		steps = append(steps, c.Command[0]+" "+c.Args[0])
	}
	if strings.Join(steps, ", ") != "flowbackup restore, flowrun run, flowbackup backup" || len(spec.Containers) != 1 {
		t.Fatalf("steps %v: want restore and flowrun as init containers (in order, each to completion), then the backup", steps)
	}
	restore, run, bk := all[0], all[1], all[2]
	if a := strings.Join(restore.Args, " "); !strings.Contains(a, "--if-empty") || !strings.Contains(a, "--if-backups-exist") {
		t.Errorf("the restore step must be safe on every run: %v", restore.Args)
	}
	if n := run.flag("init-partitions"); n == "" || n == "0" {
		t.Error("flowrun has no --init-partitions: a new flow never starts")
	}
	claim := ""
	for _, v := range spec.Volumes {
		if v.Name == "partitions" {
			claim = v.PVC.ClaimName
		}
	}
	dir := run.mount("partitions")
	if claim == "" || claim != pvc || dir == "" || run.flag("recovery-dir") != dir || restore.mount("partitions") != dir || restore.flag("to") != dir || bk.mount("partitions") != dir {
		t.Errorf("the partitions' claim %q (declared %q) at %q: flowrun -r %q, restore at %q --to %q, backup at %q",
			claim, pvc, dir, run.flag("recovery-dir"), restore.mount("partitions"), restore.flag("to"), bk.mount("partitions"))
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(config), &cfg); err != nil || cfg["recovery_dir"] != dir {
		t.Errorf("the ConfigMap's recovery_dir %v is not the partitions' mount %q (%v)", cfg["recovery_dir"], dir, err)
	}
	for _, c := range all {
		id := ""
		for _, e := range c.Env {
			if e.Name == "FLOWKEEP_MACHINE_ID" {
				id = "set"
			}
		}
		if id == "" {
			t.Errorf("%s: every run's pod has a new name: FLOWKEEP_MACHINE_ID must name the volume, or each run forks the history", c.Name)
		}
	}
}
