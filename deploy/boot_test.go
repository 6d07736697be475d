package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/freeport"
)

// A machine is a directory tree laid out as a fresh Debian machine has it
// (/etc, /etc/systemd/system, /usr/local/bin, /var/lib), into which the
// README's install steps and the units' commands are pointed.
type machine struct {
	t    *testing.T
	root string
	env  map[string]string // the environment file's values (and the test's)
}

// fresh makes an empty machine.
func fresh(t *testing.T, name string) *machine {
	root := filepath.Join(t.TempDir(), name)
	for _, d := range []string{"etc/systemd/system", "usr/local/bin", "var/lib", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &machine{t: t, root: root}
}

// absPath matches the absolute paths the install steps and the units name.
var absPath = regexp.MustCompile(`(^|[\s=:'"])(/(?:etc|usr/local/bin|var/lib)(?:/[^\s'"]*)?)`)

// at points every absolute path in s into the machine's tree.
func (m *machine) at(s string) string {
	return absPath.ReplaceAllString(s, "${1}"+m.root+"${2}")
}

// readmeInstall returns the install steps of the README's systemd section:
// the first indented block after its heading.
func readmeInstall(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "## systemd")
	if !ok {
		t.Fatal("README.md has no systemd section")
	}
	var lines []string
	for _, l := range strings.Split(sec, "\n") {
		if strings.HasPrefix(l, "    ") {
			lines = append(lines, strings.TrimSpace(l))
		} else if len(lines) > 0 && strings.TrimSpace(l) == "" {
			break
		}
	}
	if len(lines) == 0 {
		t.Fatal("README.md's systemd section has no install steps")
	}
	return lines
}

// install runs the README's install steps on the machine, from the
// repository's root, as a fresh machine would: only useradd and systemctl
// are left out (this test is not root of a real machine), and with them
// the -o/-g flowkeep that need the user. The build step runs once per test
// binary (into a machine of its own); each machine gets its binaries.
func (m *machine) install() {
	t := m.t
	t.Helper()
	for _, l := range readmeInstall(t) {
		if strings.HasPrefix(l, "useradd ") || strings.HasPrefix(l, "systemctl ") {
			continue
		}
		if strings.Contains(l, "go build") {
			bin := built(t, l)
			for _, b := range []string{"flowrun", "flowbackup"} {
				if err := os.Symlink(filepath.Join(bin, b), filepath.Join(m.root, "usr/local/bin", b)); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		m.run(l)
	}
	for _, want := range []string{"usr/local/bin/flowrun", "usr/local/bin/flowbackup", "etc/flowkeep/flowkeep.env", "etc/flowkeep/flowbackup.yaml",
		"etc/systemd/system/flowrun-batch.timer", "var/lib/flowkeep", "var/lib/flowkeep-output"} {
		if _, err := os.Stat(filepath.Join(m.root, want)); err != nil {
			t.Fatalf("after the README's install steps: %v", err)
		}
	}
}

// run runs one install step on the machine, from the repository's root.
func (m *machine) run(step string) {
	m.t.Helper()
	step = strings.NewReplacer(" -o flowkeep", "", " -g flowkeep", "").Replace(step)
	cmd := exec.Command("sh", "-ec", m.at(step))
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		m.t.Fatalf("README install step on a fresh machine: %s\n%v\n%s", step, err, out)
	}
}

var buildOnce struct {
	sync.Once
	root string
}

// built runs the README's build step once, into a machine of its own, and
// returns where the binaries are.
func built(t *testing.T, step string) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := os.MkdirTemp("", "flowkeep-deploy-test")
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755)
		buildOnce.root = root
		(&machine{t: t, root: root}).run(step)
	})
	bin := filepath.Join(buildOnce.root, "usr/local/bin")
	if _, err := os.Stat(filepath.Join(bin, "flowbackup")); err != nil {
		t.Fatalf("the README's build step made no flowbackup: %v", err)
	}
	return bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildOnce.root != "" {
		os.RemoveAll(buildOnce.root)
	}
	os.Exit(code)
}

// configure sets up the machine as an operator edits the installed files:
// the bucket is a local directory, the input a file, and env holds extra
// settings (uncommenting the environment file's lines that set them).
func (m *machine) configure(bucket string, extra map[string]string) {
	t := m.t
	t.Helper()
	cfg := filepath.Join(m.root, "etc/flowkeep/flowbackup.yaml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	skip := false
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(l, "url:"):
			l = "url: file://" + bucket
		case strings.HasPrefix(l, "s3:"):
			skip = true
			continue
		case skip && strings.HasPrefix(l, "  "):
			continue
		}
		skip = false
		out = append(out, m.at(l))
	}
	os.WriteFile(cfg, []byte(strings.Join(out, "\n")), 0o640)
	envPath := filepath.Join(m.root, "etc/flowkeep/flowkeep.env")
	b, err = os.ReadFile(envPath)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	set := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		k, _, ok := strings.Cut(strings.TrimPrefix(l, "# "), "=")
		if v, want := extra[k]; ok && want {
			l = k + "=" + v
			set[k] = true
		}
		lines = append(lines, l)
	}
	for k := range extra {
		if !set[k] {
			t.Fatalf("flowkeep.env has no line (set or commented) for %s", k)
		}
	}
	os.WriteFile(envPath, []byte(strings.Join(lines, "\n")), 0o640)
	m.env = map[string]string{}
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("flowkeep.env: bad line %q", l)
		}
		m.env[k] = m.at(v)
	}
	os.MkdirAll(filepath.Dir(m.env["FLOWRUN_INPUT"]), 0o755)
}

// command is a unit's Exec line as systemd runs it: prefixes dropped,
// ${VAR} replaced by the variable's value as one word, $VAR split into
// words, paths pointed into the machine.
func (m *machine) command(unitFile, key string) [][]string {
	t := m.t
	t.Helper()
	u := unit(t, filepath.Join(m.root, "etc/systemd/system", unitFile))
	var out [][]string
	for _, line := range u["Service"][key] {
		line = strings.TrimLeft(line, "-@+!:")
		var args []string
		for _, w := range strings.Fields(line) {
			switch {
			case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
				args = append(args, m.env[w[2:len(w)-1]])
			case strings.HasPrefix(w, "$"):
				args = append(args, strings.Fields(m.env[w[1:]])...)
			default:
				args = append(args, m.at(w))
			}
		}
		out = append(out, args)
	}
	return out
}

// environ is what systemd gives a unit: the environment file, and a PATH.
func (m *machine) environ(extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + m.root, "TMPDIR=" + filepath.Join(m.root, "tmp")}
	for k, v := range m.env {
		env = append(env, k+"="+v)
	}
	return append(env, extra...)
}

// start runs the unit's ExecStartPre and ExecStart lines in order, as
// systemd does, and returns what they printed and the exit code of the
// first that failed (0 if none).
func (m *machine) start(unitFile string) (string, int) {
	t := m.t
	t.Helper()
	var all bytes.Buffer
	for _, key := range []string{"ExecStartPre", "ExecStart"} {
		for _, args := range m.command(unitFile, key) {
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Env = m.environ()
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			fmt.Fprintf(&all, "$ %s\n%s", strings.Join(args, " "), out.String())
			if err != nil {
				code := -1
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
				}
				return all.String(), code
			}
		}
	}
	return all.String(), 0
}

func (m *machine) mustStart(unitFile string) string {
	m.t.Helper()
	out, code := m.start(unitFile)
	if code != 0 {
		m.t.Fatalf("%s on %s: exit %d\n%s", unitFile, filepath.Base(m.root), code, out)
	}
	return out
}

// partitions lists the partition files in the machine's recovery directory.
func (m *machine) partitions() []string {
	ents, _ := os.ReadDir(filepath.Join(m.root, "var/lib/flowkeep"))
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "part-") && strings.HasSuffix(e.Name(), ".sqlite3") {
			out = append(out, e.Name())
		}
	}
	return out
}

func appendWords(t *testing.T, path string, from, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for i := from; i < from+n; i++ {
		fmt.Fprintf(w, "w%c%c alpha w%c\n", 'a'+i%26, 'a'+i/26%26, 'a'+i%7)
	}
	w.Flush()
}

// totals reads wordcount's output: each word's last line is its total.
func totals(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		w, c, _ := strings.Cut(l, ",")
		m[w] = c
	}
	return m
}

// wantTotals counts the words of input lines [0, n) as wordcount does.
func wantTotals(n int) map[string]string {
	c := map[string]int{}
	for i := 0; i < n; i++ {
		for _, w := range []string{fmt.Sprintf("w%c%c", 'a'+i%26, 'a'+i/26%26), "alpha", fmt.Sprintf("w%c", 'a'+i%7)} {
			c[w]++
		}
	}
	out := map[string]string{}
	for w, n := range c {
		out[w] = fmt.Sprint(n)
	}
	return out
}

func sameTotals(t *testing.T, got, want map[string]string, what string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d words, want %d", what, len(got), len(want))
	}
	for w, c := range want {
		if got[w] != c {
			t.Fatalf("%s: %s counted %s, want %s", what, w, got[w], c)
		}
	}
}

var servingRef = regexp.MustCompile(`"msg":"serving metrics","addr":"([^"]+)"`)

// agentOnce starts the agent unit's command, waits for its first run to
// end, reads its run-level metrics, and stops it with SIGTERM.
func (m *machine) agentOnce() string {
	t := m.t
	t.Helper()
	args := m.command("flowbackup-agent.service", "ExecStart")[0]
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = m.environ("FLOWBACKUP_METRICS_ADDR=127.0.0.1:0")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
		pw.Close()
	}()
	addr := make(chan string, 1)
	var log bytes.Buffer
	var mu sync.Mutex
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			log.WriteString(sc.Text() + "\n")
			mu.Unlock()
			// The unit logs JSON: {"msg":"serving metrics","addr":"…"}.
			if m := servingRef.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	var url string
	select {
	case a := <-addr:
		url = "http://" + a + "/metrics"
	case <-time.After(60 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("the agent serves no metrics:\n%s", log.String())
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		resp, err := http.DefaultClient.Do(req)
		var body []byte
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		cancel()
		if strings.Contains(string(body), `flowkeep_backup_last_attempt_timestamp_seconds{flow="wordcount",partition="all"}`) {
			return string(body)
		}
		if time.Now().After(deadline) {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("the agent's first run did not end (metrics %v):\n%s\n%s", err, body, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// metricValue reads one series' value from a scrape.
func metricValue(scrape, series string) string {
	for _, l := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return ""
}

// The deploy units on a fresh machine: the README's install steps, then
// the units in boot order (restore, the flow, the agent). A first boot
// (no partitions, no backups) creates the partitions and runs; a replaced
// machine (an empty disk, backups) restores and continues; the unit of a
// flow that tails runs the same flow.
func TestBoot_FreshMachineThenReplacedMachine(t *testing.T) {
	bucket := filepath.Join(t.TempDir(), "bucket") // it exists, empty, as terraform/ makes it
	os.Mkdir(bucket, 0o755)
	a := fresh(t, "machine-a")
	a.install()
	a.configure(bucket, nil)
	in, out := a.env["FLOWRUN_INPUT"], a.env["FLOWRUN_OUTPUT"]
	appendWords(t, in, 0, 3000)

	got := a.mustStart("flowkeep-restore.service")
	if !strings.Contains(got, "no backups yet") {
		t.Fatalf("first boot, restore:\n%s", got)
	}
	got = a.mustStart("flowrun-batch.service")
	n := a.env["FLOWRUN_INIT_PARTITIONS"]
	if !strings.Contains(got, "created "+n+" recovery partitions") || len(a.partitions()) != atoi(t, n) {
		t.Fatalf("first boot, flowrun: partitions %v\n%s", a.partitions(), got)
	}
	sameTotals(t, totals(t, out), wantTotals(3000), "first boot")
	scrape := a.agentOnce()
	for series, want := range map[string]string{
		`flowkeep_backup_failures_total{flow="wordcount",partition="all"}`: "0",
		`flowkeep_backup_failures_total{flow="wordcount",partition="0"}`:   "0",
	} {
		if got := metricValue(scrape, series); got != want {
			t.Errorf("after the agent's first run: %s = %q, want %s", series, got, want)
		}
	}
	// The timer's next run reads only what was appended.
	appendWords(t, in, 3000, 1000)
	if got := a.mustStart("flowrun-batch.service"); strings.Contains(got, "created") {
		t.Fatalf("second run created partitions:\n%s", got)
	}
	sameTotals(t, totals(t, out), wantTotals(4000), "second run")
	a.agentOnce()

	// Machine a is lost; b is a new machine with an empty disk. Input and
	// output lived on shared storage: b sees them where a left them.
	b := fresh(t, "machine-b")
	b.install()
	b.configure(bucket, nil)
	for _, d := range []string{filepath.Dir(in), filepath.Dir(out)} {
		rel, _ := filepath.Rel(a.root, d)
		os.RemoveAll(filepath.Join(b.root, rel))
		if err := os.Symlink(d, filepath.Join(b.root, rel)); err != nil {
			t.Fatal(err)
		}
	}
	got = b.mustStart("flowkeep-restore.service")
	if len(b.partitions()) != atoi(t, n) {
		t.Fatalf("replaced machine: restored %v\n%s", b.partitions(), got)
	}
	appendWords(t, in, 4000, 500)
	if got := b.mustStart("flowrun-batch.service"); strings.Contains(got, "created") {
		t.Fatalf("a restored machine created partitions:\n%s", got)
	}
	sameTotals(t, totals(t, out), wantTotals(4500), "after the restore")
	// The restore step on a later boot does nothing.
	if got := b.mustStart("flowkeep-restore.service"); !strings.Contains(got, "nothing restored") {
		t.Fatalf("second boot, restore:\n%s", got)
	}
	// The unit of a flow that tails runs the same command line (here over
	// a file, so it ends).
	appendWords(t, in, 4500, 500)
	b.mustStart("flowrun.service")
	sameTotals(t, totals(t, out), wantTotals(5000), "flowrun.service")
	// A start told another partition count is refused, saying the count.
	b.env["FLOWRUN_INIT_PARTITIONS"] = "7"
	got, code := b.start("flowrun-batch.service")
	if code == 0 || !strings.Contains(got, "--init-partitions "+n) {
		t.Fatalf("another count: exit %d\n%s", code, got)
	}
}

// A 2-machine cluster's first boot: each machine's environment file sets
// the cluster lines (as the file's comments show), the restore step finds
// no backups, and the two flowrun processes agree on one flow and each
// creates its share of the partitions.
func TestBoot_TwoMachineClusterFirstBoot(t *testing.T) {
	bucket := filepath.Join(t.TempDir(), "bucket") // it exists, empty, as terraform/ makes it
	os.Mkdir(bucket, 0o755)
	addrs, err := freeport.Addrs(2)
	if err != nil {
		t.Fatal(err)
	}
	var ms []*machine
	for i := 0; i < 2; i++ {
		m := fresh(t, fmt.Sprintf("node-%d", i))
		m.install()
		secret := filepath.Join(m.root, "etc/flowkeep/cluster-secret")
		os.WriteFile(secret, []byte("a-long-random-string-shared-by-the-cluster\n"), 0o600)
		m.configure(bucket, map[string]string{
			"FLOWRUN_ADDRESSES": strings.Join(addrs, ","), "FLOWRUN_PROCESS_ID": fmt.Sprint(i),
			"FLOWBACKUP_PROCESS_ID": fmt.Sprint(i), "FLOWBACKUP_PROCESSES": "2",
			"FLOWRUN_CLUSTER_SECRET_FILE": "/etc/flowkeep/cluster-secret",
		})
		ms = append(ms, m)
	}
	// Input and output on shared storage.
	in, out := ms[0].env["FLOWRUN_INPUT"], ms[0].env["FLOWRUN_OUTPUT"]
	for _, d := range []string{filepath.Dir(in), filepath.Dir(out)} {
		rel, _ := filepath.Rel(ms[0].root, d)
		os.RemoveAll(filepath.Join(ms[1].root, rel))
		if err := os.Symlink(d, filepath.Join(ms[1].root, rel)); err != nil {
			t.Fatal(err)
		}
	}
	appendWords(t, in, 0, 5000)
	boot := func() []string {
		res := make([]string, 2)
		var wg sync.WaitGroup
		for i, m := range ms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var b strings.Builder
				for _, u := range []string{"flowkeep-restore.service", "flowrun-batch.service"} {
					got, code := m.start(u)
					b.WriteString(got)
					if code != 0 {
						fmt.Fprintf(&b, "%s: exit %d\n", u, code)
						break
					}
				}
				res[i] = b.String()
			}()
		}
		wg.Wait()
		return res
	}
	res := boot()
	n := atoi(t, ms[0].env["FLOWRUN_INIT_PARTITIONS"])
	for i, m := range ms {
		var want []string
		for p := i; p < n; p += 2 {
			want = append(want, fmt.Sprintf("part-%d.sqlite3", p))
		}
		if got := m.partitions(); !slices.Equal(got, want) || strings.Contains(res[i], ": exit ") {
			t.Fatalf("node %d: partitions %v, want %v\n%s", i, got, want, res[i])
		}
		if !strings.Contains(res[i], "no backups yet") {
			t.Errorf("node %d: the restore step did not run first:\n%s", i, res[i])
		}
	}
	sameTotals(t, totals(t, out), wantTotals(5000), "the cluster's first run")
	// The next boot creates nothing and continues.
	appendWords(t, in, 5000, 1000)
	for i, r := range boot() {
		if strings.Contains(r, "created") || strings.Contains(r, ": exit ") {
			t.Fatalf("node %d, second boot:\n%s", i, r)
		}
	}
	sameTotals(t, totals(t, out), wantTotals(6000), "the cluster's second run")
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("%q is not a number", s)
	}
	return n
}
