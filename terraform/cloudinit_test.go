package terraform

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
	"gopkg.in/yaml.v3"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/flowbackup"
	"github.com/flowkeep/flowkeep/flowrun"
)

// cloudConfig renders the cloud-init template as templatefile would, with
// vars, and parses the result.
func cloudConfig(t *testing.T, vars map[string]string) (string, map[string]any) {
	t.Helper()
	src, err := os.ReadFile("modules/cloud-init/flowkeep.yaml.tftpl")
	if err != nil {
		t.Fatal(err)
	}
	expr, diags := hclsyntax.ParseTemplate(src, "flowkeep.yaml.tftpl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	vals := map[string]cty.Value{}
	for k, v := range vars {
		vals[k] = cty.StringVal(v)
	}
	out, diags := expr.Value(&hcl.EvalContext{Variables: vals})
	if diags.HasErrors() {
		t.Fatalf("render: %v", diags)
	}
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(out.AsString()), &doc); err != nil {
		t.Fatalf("rendered cloud-config is not YAML: %v\n%s", err, out.AsString())
	}
	return out.AsString(), doc
}

func templateVars(release, flowrunSum, flowbackupSum, restoreArgs string) map[string]string {
	return map[string]string{
		"data_device": "/dev/nvme1n1", "flowrun_args": "wordcount -w 2", "backup_url": "s3://b/p",
		"backup_schedule": "*/5 * * * *", "release_url": release, "init_partitions": "0",
		"flowrun_sha256": flowrunSum, "flowbackup_sha256": flowbackupSum, "restore_args": restoreArgs,
		"age_recipients": "", "age_identity_file": "", "run_on_calendar": "",
	}
}

// Encrypted backups: the agent gets the recipients file the machine is
// given, the restore step the identity file, under the flags that read
// them, and the recipients file is one age reads.
func TestCloudInit_EncryptedBackups(t *testing.T) {
	sum := strings.Repeat("a", 64)
	var keys []string
	for i := 0; i < 2; i++ {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, id.Recipient().String())
	}
	vars := templateVars("https://r.example/v1", sum, sum, "")
	// As the node modules pass them: join(var.age_recipients).
	vars["age_recipients"], vars["age_identity_file"] = strings.Join(keys, "\n      "), "/run/secrets/flowkeep-age.key"
	_, doc := cloudConfig(t, vars)
	files := map[string]string{}
	for _, f := range doc["write_files"].([]any) {
		files[f.(map[string]any)["path"].(string)] = f.(map[string]any)["content"].(string)
	}
	var settings map[string]string
	if err := yaml.Unmarshal([]byte(files["/etc/flowkeep/agent.yaml"]), &settings); err != nil {
		t.Fatal(err)
	}
	if settings["recipients_file"] != "/etc/flowkeep/age-recipients.txt" || settings["identity_file"] != "/run/secrets/flowkeep-age.key" {
		t.Fatalf("agent.yaml: %v", settings)
	}
	checkFlags(t, "flowbackup", []string{"agent", "--recipients-file"})
	checkFlags(t, "flowbackup", []string{"restore", "--identity-file"})
	path := filepath.Join(t.TempDir(), "recipients")
	os.WriteFile(path, []byte(files["/etc/flowkeep/age-recipients.txt"]), 0o644)
	rs, err := backup.LoadRecipients(path)
	if err != nil || len(rs) != 2 {
		t.Fatalf("the recipients file holds %d recipients: %v\n%s", len(rs), err, files["/etc/flowkeep/age-recipients.txt"])
	}
	// Without keys, nothing of the kind is written.
	_, doc = cloudConfig(t, templateVars("https://r.example/v1", sum, sum, ""))
	for _, f := range doc["write_files"].([]any) {
		if c := f.(map[string]any)["content"].(string); strings.Contains(c, "recipients") || strings.Contains(c, "identity_file") {
			t.Fatalf("%s names age keys without any given", f.(map[string]any)["path"])
		}
	}
}

// units returns the systemd units the cloud-config writes, parsed.
func units(t *testing.T, doc map[string]any) map[string]map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string]map[string][]string{}
	for _, f := range doc["write_files"].([]any) {
		f := f.(map[string]any)
		path := f["path"].(string)
		if !strings.HasSuffix(path, ".service") {
			continue
		}
		u := map[string]map[string][]string{}
		sec := ""
		for _, l := range strings.Split(f["content"].(string), "\n") {
			l = strings.TrimSpace(l)
			switch {
			case l == "" || strings.HasPrefix(l, "#"):
			case strings.HasPrefix(l, "["):
				sec = strings.Trim(l, "[]")
				u[sec] = map[string][]string{}
			default:
				k, v, ok := strings.Cut(l, "=")
				if !ok || sec == "" {
					t.Fatalf("%s: bad line %q", path, l)
				}
				u[sec][k] = append(u[sec][k], v)
			}
		}
		out[filepath.Base(path)] = u
	}
	return out
}

// A machine runs both services as the unprivileged user flowkeep, and a
// replaced machine restores its partitions before flowrun starts, only
// when its disk holds none and backups exist, with real flags.
func TestCloudInit_UnprivilegedServicesAndRestoreOnFirstBoot(t *testing.T) {
	sum := strings.Repeat("a", 64)
	_, doc := cloudConfig(t, templateVars("https://r.example/v1", sum, sum, "--process-id 2 --processes 3"))
	us := units(t, doc)
	for _, name := range []string{"flowrun.service", "flowbackup-agent.service"} {
		s := us[name]["Service"]
		if s == nil {
			t.Fatalf("no %s", name)
		}
		if got := s["User"]; len(got) != 1 || got[0] != "flowkeep" {
			t.Errorf("%s runs as %v, want flowkeep", name, got)
		}
		if got := s["ReadWritePaths"]; len(got) != 1 || got[0] != "/var/lib/flowkeep" {
			t.Errorf("%s may write %v, want only /var/lib/flowkeep", name, got)
		}
	}
	run := us["flowrun.service"]["Service"]
	if len(run["ExecStartPre"]) != 1 {
		t.Fatalf("flowrun.service has no restore step: %v", run)
	}
	pre := run["ExecStartPre"][0]
	env := map[string]string{}
	for _, f := range doc["write_files"].([]any) {
		if f.(map[string]any)["path"] == "/etc/flowkeep/flowrun.env" {
			for _, l := range strings.Split(f.(map[string]any)["content"].(string), "\n") {
				if k, v, ok := strings.Cut(l, "="); ok {
					env[k] = v
				}
			}
		}
	}
	cmdline := strings.NewReplacer("$RESTORE_ARGS", env["RESTORE_ARGS"], "'", "").Replace(pre)
	args := strings.Fields(cmdline[strings.Index(cmdline, "/usr/local/bin/flowbackup"):])
	for _, want := range []string{"restore", "--if-empty", "--if-backups-exist", "--config", "--process-id", "--processes"} {
		if !contains(args, want) {
			t.Errorf("restore step %q lacks %s", cmdline, want)
		}
	}
	checkFlags(t, "flowbackup", args[1:])
	start := run["ExecStart"][0]
	checkFlags(t, "flowrun", strings.Fields(strings.NewReplacer("$FLOWRUN_ARGS", env["FLOWRUN_ARGS"], "'", "").Replace(start[strings.Index(start, "flowrun run")+len("flowrun "):])))
	if !strings.Contains(strings.Join(us["flowbackup-agent.service"]["Unit"]["After"], " "), "flowrun.service") {
		t.Error("the agent must start after flowrun's restore step")
	}
	var userMade bool
	for _, c := range doc["runcmd"].([]any) {
		line := strings.Join(toStrings(c), " ")
		userMade = userMade || strings.Contains(line, "useradd --system")
		// Partitions made before the service runs would stop a replaced
		// machine from restoring, and make a different flow on each
		// machine of a cluster.
		if strings.Contains(line, "recovery init") {
			t.Errorf("cloud-init creates partitions itself, before the restore step: %s", line)
		}
	}
	if !userMade {
		t.Error("cloud-init must create the user flowkeep")
	}
	// A first start creates the partitions, through flowrun's own flag,
	// after the restore step.
	if env["FLOWRUN_INIT_PARTITIONS"] != "0" {
		t.Errorf("flowrun.env: FLOWRUN_INIT_PARTITIONS=%q, want the node's init_partitions", env["FLOWRUN_INIT_PARTITIONS"])
	}
	checkFlags(t, "flowrun", []string{"run", "--init-partitions"})
	// A flow that tails is a service restarted on failure, started at boot.
	if run["Restart"][0] != "on-failure" || len(run["Type"]) != 0 || us["flowrun.service"]["Install"] == nil {
		t.Errorf("a flow that tails: %v", us["flowrun.service"])
	}
}

// A flow that ends at the end of its input runs as a oneshot on a timer
// (never Restart=, which reruns a finished flow every few seconds), started
// on the wall clock's ticks; the restore step still runs first.
func TestCloudInit_AFlowThatEndsRunsOnATimer(t *testing.T) {
	sum := strings.Repeat("a", 64)
	vars := templateVars("https://r.example/v1", sum, sum, "--process-id 1 --processes 3")
	vars["run_on_calendar"], vars["init_partitions"] = "*:0/5", "6"
	_, doc := cloudConfig(t, vars)
	us := units(t, doc)
	run := us["flowrun.service"]["Service"]
	if len(run["Type"]) == 0 || run["Type"][0] != "oneshot" || len(run["Restart"]) != 0 || len(run["ExecStartPre"]) != 1 || us["flowrun.service"]["Install"] != nil {
		t.Errorf("flowrun.service of a flow that ends: %v", us["flowrun.service"])
	}
	var timer string
	for _, f := range doc["write_files"].([]any) {
		if f.(map[string]any)["path"] == "/etc/systemd/system/flowrun.timer" {
			timer = f.(map[string]any)["content"].(string)
		}
	}
	if !strings.Contains(timer, "OnCalendar=*:0/5") || !strings.Contains(timer, "Unit=flowrun.service") {
		t.Errorf("flowrun.timer:\n%s", timer)
	}
	var enabled string
	for _, c := range doc["runcmd"].([]any) {
		if line := strings.Join(toStrings(c), " "); strings.Contains(line, "systemctl enable") {
			enabled = line
		}
	}
	if !strings.Contains(enabled, "flowrun.timer") || strings.Contains(enabled, "flowrun.service") {
		t.Errorf("cloud-init enables: %s", enabled)
	}
	out, _ := cloudConfig(t, vars)
	if !strings.Contains(out, "FLOWRUN_INIT_PARTITIONS=6") {
		t.Error("flowrun.env does not carry init_partitions")
	}
	// Without a calendar there is no timer.
	out, _ = cloudConfig(t, templateVars("https://r.example/v1", sum, sum, ""))
	if strings.Contains(out, "/etc/systemd/system/flowrun.timer") || !strings.Contains(out, "systemctl enable --now flowbackup-agent.service flowrun.service") {
		t.Errorf("a flow that tails got a timer:\n%s", out)
	}
}

// The cluster's restore arguments come from the node's place in it.
func TestNodes_RestoreArgsFollowTheCluster(t *testing.T) {
	for _, dir := range []string{"modules/aws-node", "modules/gcp-node"} {
		m := load(t, dir)
		locals := m.one(t, "locals")
		a, ok := locals.Body.Attributes["restore_args"]
		if !ok {
			t.Fatalf("%s has no local restore_args", dir)
		}
		for _, tt := range []struct{ addresses, want string }{
			{"", ""},
			{"10.0.0.1:7400,10.0.0.2:7400,10.0.0.3:7400", "--process-id 2 --processes 3"},
		} {
			ctx := &hcl.EvalContext{
				Variables: map[string]cty.Value{"var": cty.ObjectVal(map[string]cty.Value{
					"addresses": cty.StringVal(tt.addresses), "process_id": cty.NumberIntVal(2)})},
				Functions: map[string]function.Function{"length": stdlib.LengthFunc, "split": stdlib.SplitFunc},
			}
			v, diags := a.Expr.Value(ctx)
			if diags.HasErrors() {
				t.Fatalf("%s: %v", dir, diags)
			}
			if v.AsString() != tt.want {
				t.Errorf("%s: restore_args for %q = %q, want %q", dir, tt.addresses, v.AsString(), tt.want)
			}
		}
	}
}

// The machine installs the binaries only when their sha256 matches: a
// tampered or truncated download is refused and nothing is installed.
func TestCloudInit_RefusesBinariesWithTheWrongSHA256(t *testing.T) {
	for _, tool := range []string{"curl", "sha256sum", "install"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	release := t.TempDir()
	sums := map[string]string{}
	for _, b := range []string{"flowrun", "flowbackup"} {
		body := []byte("#!/bin/sh\necho " + b + "\n")
		os.WriteFile(filepath.Join(release, b), body, 0o644)
		h := sha256.Sum256(body)
		sums[b] = hex.EncodeToString(h[:])
	}
	install := func(flowrunSum string) (string, []string, error) {
		_, doc := cloudConfig(t, templateVars("file://"+release, flowrunSum, sums["flowbackup"], ""))
		var script string
		for _, c := range doc["runcmd"].([]any) {
			if s := toStrings(c); len(s) == 3 && strings.Contains(s[2], "sha256sum") {
				script = s[2]
			}
		}
		if script == "" {
			t.Fatal("no install step checks sha256")
		}
		bin := t.TempDir()
		cmd := exec.Command("sh", "-c", strings.ReplaceAll(script, "/usr/local/bin/", bin+"/"))
		out, err := cmd.CombinedOutput()
		ents, _ := os.ReadDir(bin)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return string(out), names, err
	}
	if out, got, err := install(sums["flowrun"]); err != nil || len(got) != 2 {
		t.Fatalf("good binaries: %v, installed %v\n%s", err, got, out)
	}
	if out, got, err := install(strings.Repeat("0", 64)); err == nil || len(got) != 0 {
		t.Fatalf("a binary with the wrong sha256: %v, installed %v\n%s", err, got, out)
	}
}

func toStrings(c any) []string {
	switch c := c.(type) {
	case string:
		return []string{c}
	case []any:
		var out []string
		for _, x := range c {
			out = append(out, toStrings(x)...)
		}
		return out
	}
	return nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// checkFlags fails unless args name a subcommand of bin and only flags it
// has.
func checkFlags(t *testing.T, bin string, args []string) {
	t.Helper()
	root := flowbackup.NewRootCommand(io.Discard, io.Discard)
	if bin == "flowrun" {
		root = flowrun.NewRootCommand(io.Discard, io.Discard, flowrun.BuiltinFlows()...)
	}
	cmd, rest, err := root.Find(args)
	if err != nil || cmd == root {
		t.Errorf("%s %v is not a subcommand (%v)", bin, args, err)
		return
	}
	for _, a := range rest {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			name, _, _ = strings.Cut(name, "=")
			if cmd.Flags().Lookup(name) == nil && cmd.InheritedFlags().Lookup(name) == nil {
				t.Errorf("%s %s has no flag --%s", bin, cmd.Name(), name)
			}
		}
	}
}
