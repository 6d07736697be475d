package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Drill 1: the VM is destroyed. flowrun (4 partitions, 2 workers) processes
// a growing input while the agent backs up every second; both are killed;
// the recovery directory is deleted; the partitions are restored onto two
// new directories (as two machines would hold them) and the flow resumes as
// one run with 3 workers. The output must say what an uninterrupted run's
// says: the same lines, each once, and the same totals read from the top
// (their order within a pass depends on the workers, which write as they go).
func TestDrill1_VMDestroyed(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			began := time.Now()
			dir := t.TempDir()
			env := b.env(b.addr)
			url := b.newURL(t)
			first, second := filepath.Join(dir, "v1.txt"), filepath.Join(dir, "v2.txt")
			appendWords(t, first, 100_000, 4000, 1)
			appendWords(t, second, 8_000_000, 4000, 2)
			flowArgs := func(in, out string, w string, recs ...string) []string {
				a := []string{"run", "wordcount", "-i", in, "-o", out, "-s", "100ms", "-b", "3s", "-w", w}
				for _, r := range recs {
					a = append(a, "-r", r)
				}
				return a
			}

			// The uninterrupted baseline: pass 1, the input grows, pass 2.
			base := filepath.Join(dir, "base")
			initRec(t, base, 4)
			baseIn, baseOut := filepath.Join(dir, "base-in.txt"), filepath.Join(dir, "base-out.csv")
			copyFile(t, first, baseIn)
			mustCmd(t, nil, flowrunBin, flowArgs(baseIn, baseOut, "2", base)...)
			appendFile(t, baseIn, second)
			mustCmd(t, nil, flowrunBin, flowArgs(baseIn, baseOut, "2", base)...)
			want, _ := os.ReadFile(baseOut)

			// The incident.
			rec := filepath.Join(dir, "rec")
			initRec(t, rec, 4)
			in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
			copyFile(t, first, in)
			agent := startCmd(t, env, backupBin, "agent", "-r", rec, "--to", url, "--schedule", "@every 1s", "--lock-ttl", "20s")
			pass1 := mustCmd(t, nil, flowrunBin, flowArgs(in, out, "2", rec)...)
			m := regexp.MustCompile(`epochs \d+\.\.(\d+)`).FindStringSubmatch(pass1)
			if m == nil {
				t.Fatalf("no epochs in %q", pass1)
			}
			end1, _ := strconv.Atoi(m[1])
			appendFile(t, in, second)
			run := startCmd(t, nil, flowrunBin, flowArgs(in, out, "2", rec)...)
			// Let the agent back up every partition well into the second
			// pass (epochs past the first pass's end), then kill both.
			progressed := func() int {
				n := 0
				for _, hi := range regexp.MustCompile(`epochs=\d+\.\.(\d+)`).FindAllStringSubmatch(agent.out.String(), -1) {
					if e, _ := strconv.Atoi(hi[1]); e >= end1+3 {
						n++
					}
				}
				return n
			}
			deadline := time.Now().Add(30 * time.Second)
			for progressed() < 4 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			killedRun := run.kill()
			agent.kill()
			if !killedRun {
				t.Fatalf("flowrun finished its second pass before the agent backed it up; make the input larger")
			}
			if err := os.RemoveAll(rec); err != nil {
				t.Fatal(err)
			}

			// New machines: two directories, then one run over both with 3 workers.
			machA, machB := filepath.Join(dir, "machine-a"), filepath.Join(dir, "machine-b")
			ra := mustCmd(t, env, backupBin, "restore", "--from", url, "--to", machA, "--partitions", "0,1")
			mustCmd(t, env, backupBin, "restore", "--from", url, "--to", machB, "--partitions", "2-3")
			mustCmd(t, nil, flowrunBin, flowArgs(in, out, "3", machA, machB)...)
			got, _ := os.ReadFile(out)
			if diff := sameWordcountOutput(got, want); diff != "" {
				t.Fatalf("output after restore says other than the uninterrupted run's: %s (%d vs %d bytes)\nrestore said:\n%s", diff, len(got), len(want), ra)
			}
			drillLog(t, began, fmt.Sprintf("nothing (the same lines and totals; pass 1 ended at epoch %d; %s)", end1, firstLine(ra)))
		})
	}
}

func appendFile(t *testing.T, dst, src string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(dst, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
