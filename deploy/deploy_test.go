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
func checkMetrics(t *testing.T, where, expr string) {
	t.Helper()
	for _, m := range metricRef.FindAllString(expr, -1) {
		base := m
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(m, suf); ok && slices.Contains(backup.MetricNames, b) {
				base = b
			}
		}
		if !slices.Contains(backup.MetricNames, base) {
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
	for _, want := range []string{"FlowkeepRPOTooHigh", "FlowkeepBackupFailing", "FlowkeepNoBackupAttempt", "FlowkeepTwoMachinesRunOneFlow", "FlowkeepBackupFenced"} {
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
	if len(units) != 3 {
		t.Fatalf("units %v", units)
	}
	parsed := map[string]map[string]map[string][]string{}
	for _, u := range units {
		parsed[filepath.Base(u)] = unit(t, u)
		for _, ex := range parsed[filepath.Base(u)]["Service"]["ExecStart"] {
			f := strings.Fields(ex)
			checkCommand(t, u, f[0], f[1:])
		}
	}
	restore, run := parsed["flowkeep-restore.service"], parsed["flowrun.service"]
	if restore["Service"]["Type"][0] != "oneshot" || !slices.Contains(restore["Unit"]["Before"], "flowrun.service") {
		t.Errorf("the restore unit must be a oneshot ordered before flowrun: %v", restore)
	}
	ex := restore["Service"]["ExecStart"][0]
	if !strings.Contains(ex, "--if-empty") || !strings.Contains(ex, "--if-backups-exist") {
		t.Errorf("the restore unit must be safe on every boot: %s", ex)
	}
	if !strings.Contains(strings.Join(run["Unit"]["Requires"], " "), "flowkeep-restore.service") ||
		!strings.Contains(strings.Join(run["Unit"]["After"], " "), "flowkeep-restore.service") {
		t.Errorf("flowrun must start after the restore: %v", run["Unit"])
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: units parsed only")
		return
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
	for _, u := range units {
		b, _ := os.ReadFile(u)
		c := filepath.Join(dir, filepath.Base(u))
		os.WriteFile(c, bytes.ReplaceAll(b, []byte("/usr/local/bin/"), []byte(stand+"/")), 0o644)
		copies = append(copies, c)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, copies...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=warning")
	out, err := cmd.CombinedOutput()
	// Without a running systemd (containers), verify cannot load units at
	// all; only findings about our files count.
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, dir) && !strings.Contains(l, "User=") && !strings.Contains(l, "Group=") && !strings.Contains(l, "Failed to") {
			t.Errorf("systemd-analyze verify: %s", l)
		}
	}
	_ = err
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
