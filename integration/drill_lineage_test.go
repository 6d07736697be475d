package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/freeport"
)

// machine is the environment that makes a tool play one machine.
func machine(env []string, name string) []string {
	return append(append([]string(nil), env...), "FLOWKEEP_HOST="+name, "FLOWKEEP_MACHINE_ID="+name)
}

// continued runs wordcount on rec over in, writing to stdout, and returns
// its output lines sorted (each word's total after in).
func continued(t *testing.T, rec, in string) []string {
	t.Helper()
	out := mustCmd(t, nil, flowrunBin, "run", "wordcount", "-i", in, "-o", "-", "-r", rec, "-s", "200ms", "-b", "1h")
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, ",") && !strings.HasPrefix(l, "flowrun:") {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	return lines
}

// Drill 9: a flow is restored onto a new machine while the old one keeps
// running and backing up (S3 and GCS, plain and encrypted). Verify names
// both machines (exit 1); the old machine's agent is fenced at its first
// tick (metric and log); restore lays down the new machine's history alone:
// continued, it gives exactly the new machine's totals.
func TestDrill9_TwoMachinesOneFlow(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			began := time.Now()
			dir := t.TempDir()
			url := b.newURL(t)
			oldM, newM, dr := machine(b.env(b.addr), "old-vm"), machine(b.env(b.addr), "new-vm"), machine(b.env(b.addr), "dr-test")
			run := func(rec, in string) {
				mustCmd(t, nil, flowrunBin, "run", "wordcount", "-i", in, "-o", filepath.Join(filepath.Dir(rec), "out.csv"), "-r", rec, "-s", "200ms", "-b", "1h")
			}
			oldRec, newRec := filepath.Join(dir, "old", "rec"), filepath.Join(dir, "new", "rec")
			oldIn, newIn := filepath.Join(dir, "old", "in.txt"), filepath.Join(dir, "new", "in.txt")
			initRec(t, oldRec, 2)
			appendWords(t, oldIn, 20_000, 3000, 1)
			run(oldRec, oldIn)
			mustCmd(t, oldM, backupBin, "backup", "-r", oldRec, "--to", url)

			os.MkdirAll(filepath.Dir(newRec), 0o755)
			mustCmd(t, newM, backupBin, "restore", "--from", url, "--to", newRec)
			copyFile(t, oldIn, newIn)
			copyFile(t, filepath.Join(dir, "old", "out.csv"), filepath.Join(dir, "new", "out.csv"))
			appendWords(t, oldIn, 10_000, 3000, 2)
			run(oldRec, oldIn)
			mustCmd(t, oldM, backupBin, "backup", "-r", oldRec, "--to", url)
			appendWords(t, newIn, 10_000, 3000, 3)
			run(newRec, newIn)
			mustCmd(t, newM, backupBin, "backup", "-r", newRec, "--to", url)

			v := runCmd(t, dr, backupBin, "verify", "--from", url)
			if v.code != 1 || !strings.Contains(v.out, "two machines are backing up flow wordcount") || !strings.Contains(v.out, "host old-vm") || !strings.Contains(v.out, "host new-vm") {
				t.Fatalf("verify: exit %d\n%s", v.code, v.out)
			}

			// The old machine's agent: fenced at its first tick.
			addr, err := freeport.Addrs(1)
			if err != nil {
				t.Fatal(err)
			}
			agent := startCmd(t, oldM, backupBin, "agent", "-r", oldRec, "--to", url, "--schedule", "@every 1s", "--metrics-addr", addr[0])
			fenced := regexp.MustCompile(`(?m)^flowkeep_backup_fenced\{flow="wordcount"\} 1$`)
			deadline := time.Now().Add(15 * time.Second)
			for !fenced.MatchString(scrape(addr[0])) {
				if time.Now().After(deadline) {
					t.Fatalf("the old machine's agent is not fenced:\n%s\nmetrics:\n%s", agent.out.String(), scrape(addr[0]))
				}
				time.Sleep(100 * time.Millisecond)
			}
			agent.kill()
			if !strings.Contains(agent.out.String(), "FENCED") {
				t.Fatalf("the fenced agent does not say so:\n%s", agent.out.String())
			}

			// Restore: the new machine's history, and only it.
			rRec, rIn := filepath.Join(dir, "r", "rec"), filepath.Join(dir, "r", "in.txt")
			os.MkdirAll(filepath.Dir(rRec), 0o755)
			rs := mustCmd(t, dr, backupBin, "restore", "--from", url, "--to", rRec)
			if !strings.Contains(rs, "host new-vm") {
				t.Fatalf("restore did not pick the new machine's history:\n%s", rs)
			}
			copyFile(t, newIn, rIn)
			appendWords(t, rIn, 2_000, 3000, 4)
			appendWords(t, newIn, 2_000, 3000, 4)
			got, want := continued(t, rRec, rIn), continued(t, newRec, newIn)
			if len(want) < 2500 || strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("the restored flow continues with %d totals, the new machine with %d; they differ", len(got), len(want))
			}
			drillLog(t, began, "nothing (verify names both machines; the old agent fenced at its first tick; the restore continues with the new machine's totals)")
		})
	}
}

func scrape(addr string) string {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Drill 10: a crash loop with restores in between. Three times: flowrun
// runs on a growing input while the agent backs up; both are killed; the
// partitions are restored onto a new directory. Each restore lays down the
// history the last one started (one lineage each, a chain), and the final
// output says what an uninterrupted run's says: the same lines, each once,
// and the same totals.
func TestDrill10_CrashLoopWithRestores(t *testing.T) {
	b := backends(t)[0] // S3: the history logic is the store's no matter which
	began := time.Now()
	dir := t.TempDir()
	url := b.newURL(t)
	env := b.env(b.addr)
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	flow := func(rec string) []string {
		return []string{"run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "100ms", "-b", "3s", "-w", "2"}
	}
	// The baseline over the same input, uninterrupted.
	const rounds = 3
	all := filepath.Join(dir, "all.txt")
	const lines = 1_500_000
	for r := 0; r <= rounds; r++ {
		appendWords(t, all, lines, 4000, int64(10+r))
	}
	base, baseOut := filepath.Join(dir, "base"), filepath.Join(dir, "base.csv")
	initRec(t, base, 3)
	mustCmd(t, nil, flowrunBin, "run", "wordcount", "-i", all, "-o", baseOut, "-r", base, "-s", "100ms", "-b", "3s", "-w", "2")

	rec := filepath.Join(dir, "rec0")
	initRec(t, rec, 3)
	prevNew, killed := "", 0
	var lineages []string
	for r := 0; r < rounds; r++ {
		appendWords(t, in, lines, 4000, int64(10+r))
		agent := startCmd(t, env, backupBin, "agent", "-r", rec, "--to", url, "--schedule", "@every 1s", "--lock-ttl", "20s")
		run := startCmd(t, nil, flowrunBin, flow(rec)...)
		// Let the agent back up this round's history, then crash.
		deadline := time.Now().Add(30 * time.Second)
		for strings.Count(agent.out.String(), "msg=\"backed up\"") < 3 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if run.kill() {
			killed++
		}
		agent.kill()
		next := filepath.Join(dir, fmt.Sprintf("rec%d", r+1))
		js := mustCmd(t, env, backupBin, "restore", "--from", url, "--to", next, "--json")
		var res struct {
			Lineage    string `json:"lineage"`
			NewLineage string `json:"new_lineage"`
		}
		if err := json.Unmarshal([]byte(js[strings.Index(js, "{"):]), &res); err != nil {
			t.Fatalf("%v\n%s", err, js)
		}
		if prevNew != "" && res.Lineage != prevNew {
			t.Fatalf("round %d restored lineage %s, not the one the last restore started (%s)", r, res.Lineage, prevNew)
		}
		lineages = append(lineages, res.Lineage)
		prevNew, rec = res.NewLineage, next
	}
	appendWords(t, in, lines, 4000, int64(10+rounds))
	mustCmd(t, nil, flowrunBin, flow(rec)...)
	got, _ := os.ReadFile(out)
	want, _ := os.ReadFile(baseOut)
	if diff := sameWordcountOutput(got, want); len(want) == 0 || diff != "" {
		t.Fatalf("after %d crashes and restores the output says other than the uninterrupted run's: %s (%d vs %d bytes)", rounds, diff, len(got), len(want))
	}
	ls := mustCmd(t, env, backupBin, "list", "--from", url, "--json")
	var rep struct {
		Flows []struct {
			Lineages []struct {
				Lineage struct {
					ID        string `json:"id"`
					Ancestors []struct {
						ID string `json:"id"`
					} `json:"ancestors"`
				} `json:"lineage"`
			} `json:"lineages"`
			Forks []string `json:"forks"`
		} `json:"flows"`
	}
	if err := json.Unmarshal([]byte(ls), &rep); err != nil || len(rep.Flows) != 1 {
		t.Fatalf("list --json: %v\n%s", err, ls)
	}
	if f := rep.Flows[0]; len(f.Forks) > 0 || len(f.Lineages) < rounds {
		t.Fatalf("%d lineages, forks %q; want a chain of at least %d and no fork", len(f.Lineages), f.Forks, rounds)
	}
	if killed == 0 {
		t.Fatalf("no round was killed mid-run: make the input larger")
	}
	drillLog(t, began, fmt.Sprintf("nothing (the same lines and totals; %d of %d runs killed mid-run; restored lineages %v, each the one the last restore started)", killed, rounds, short(lineages)))
}

func short(ids []string) []string {
	var out []string
	for _, id := range ids {
		out = append(out, id[:min(12, len(id))])
	}
	return out
}
