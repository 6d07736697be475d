package kafka

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

var buildOnce sync.Once
var flowrunBin, backupBin string
var buildErr error

// TestMain removes what binaries built (114 leftover copies, 11 GB,
// had filled this machine's /tmp).
func TestMain(m *testing.M) {
	code := m.Run()
	if flowrunBin != "" {
		os.RemoveAll(filepath.Dir(flowrunBin))
	}
	os.Exit(code)
}

// binaries builds flowrun and flowbackup once for the process tests.
func binaries(t *testing.T) (string, string) {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flowkeep-kafka-test")
		if err != nil {
			buildErr = err
			return
		}
		flowrunBin, backupBin = filepath.Join(dir, "flowrun"), filepath.Join(dir, "flowbackup")
		for bin, pkg := range map[string]string{flowrunBin: "../../cmd/flowrun", backupBin: "../../cmd/flowbackup"} {
			if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return flowrunBin, backupBin
}

// word is the i-th word of the test vocabulary (letters only: wordcount
// splits on anything else).
func word(i int) string {
	b := []byte{'w'}
	for ; i > 0; i /= 26 {
		b = append(b, byte('a'+i%26))
	}
	return string(b)
}

// fill produces n lines over the topic's partitions, two words each from a
// vocabulary of 1000, and returns each word's count.
func fill(t *testing.T, brokers []string, topic string, parts int32, n int) map[string]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(1<<20), kgo.MaxBufferedRecords(1<<16))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	want := map[string]int64{}
	r := rand.New(rand.NewSource(1))
	var wg sync.WaitGroup
	var perr error
	var mu sync.Mutex
	for i := 0; i < n; i++ {
		a, b := word(r.Intn(1000)), word(r.Intn(1000))
		want[a]++
		want[b]++
		wg.Add(1)
		cl.Produce(context.Background(), &kgo.Record{Topic: topic, Partition: int32(i) % parts, Value: []byte(a + " " + b)}, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				perr = err
				mu.Unlock()
			}
			wg.Done()
		})
	}
	wg.Wait()
	if perr != nil {
		t.Fatal(perr)
	}
	return want
}

// counts reads the output topic (read_committed) as "word,count" lines and
// fails on any line seen twice.
func counts(t *testing.T, brokers []string, topic string, parts int32) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	seen := map[string]bool{}
	for p := int32(0); p < parts; p++ {
		for _, r := range readAll(t, brokers, topic, p) {
			line := string(r.Value)
			if seen[line] {
				t.Fatalf("output line %q appears twice: the exactly-once sink repeated output", line)
			}
			seen[line] = true
			w, c, ok := strings.Cut(line, ",")
			n, err := strconv.ParseInt(c, 10, 64)
			if !ok || err != nil {
				t.Fatalf("output line %q is not word,count", line)
			}
			if _, dup := got[w]; dup {
				t.Fatalf("word %q written twice (%d and %d)", w, got[w], n)
			}
			got[w] = n
		}
	}
	return got
}

// A flow reading a 6-partition topic into an exactly-once Kafka output is
// killed with SIGKILL again and again, resumed with 2, 5 and 1 workers, its
// partitions backed up and restored onto a new directory halfway: the
// totals are exact and no output line is repeated.
func TestFlow_KilledRescaledRestoredExactlyOnce(t *testing.T) {
	flowrun, flowbackup := binaries(t)
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	c := broker(t, map[string]int32{"lines": 6, "counts": 3})
	brokers := c.ListenAddrs()
	want := fill(t, brokers, "lines", 6, n)
	in := "kafka://" + strings.Join(brokers, ",") + "/lines"
	out := "kafka://" + strings.Join(brokers, ",") + "/counts?exactly_once=true"
	dir := t.TempDir()
	rec := filepath.Join(dir, "rec")
	os.Mkdir(rec, 0o755)
	if out, err := exec.Command(flowrun, "recovery", "init", rec, "4").CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	// run runs the flow; with kill, it is killed with SIGKILL as soon as
	// kill says so (polled), unless it finished first.
	run := func(workers int, kill func() bool) (bool, string) {
		cmd := exec.Command(flowrun, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "50ms", "-b", "1s", "-w", strconv.Itoa(workers))
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		for kill != nil {
			select {
			case err := <-done:
				return err == nil, buf.String()
			case <-time.After(20 * time.Millisecond):
			}
			if kill() {
				cmd.Process.Signal(syscall.SIGKILL)
				<-done
				return false, buf.String()
			}
		}
		err := <-done
		return err == nil, buf.String()
	}
	resumeAt := func() int {
		b, err := exec.Command(flowrun, "recovery", "inspect", "--json", rec).Output()
		if err != nil {
			t.Fatalf("inspect: %v", err)
		}
		var v struct {
			Resume int `json:"resume_epoch"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		return v.Resume
	}
	kills := 0
	var resumes []int
	last := 1
	// Each run is killed once it made a new epoch durable (past
	// the last resume point), so every resume starts mid-input.
	progressed := func() bool { return resumeAt() >= last+1 }
	for i, w := range []int{2, 5, 1, 5} {
		if ok, _ := run(w, progressed); ok {
			t.Logf("run %d with %d workers finished before its kill", i, w)
			break
		}
		kills++
		last = resumeAt()
		resumes = append(resumes, last)
	}
	if len(resumes) == 0 || slices.Max(resumes) <= 1 {
		t.Fatalf("no killed run left a durable epoch to resume from (resume epochs %v): the kills came too early to test resuming", resumes)
	}
	// Halfway: back up, restore onto a new directory, continue there.
	bk := "file://" + filepath.Join(dir, "backups")
	if out, err := exec.Command(flowbackup, "backup", "-r", rec, "--to", bk).CombinedOutput(); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	rec = filepath.Join(dir, "restored")
	if out, err := exec.Command(flowbackup, "restore", "--from", bk, "--to", rec).CombinedOutput(); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	last = resumeAt()
	if ok, _ := run(3, progressed); !ok {
		kills++
	}
	if ok, log := run(2, nil); !ok {
		t.Fatalf("the last run failed:\n%s", log)
	}
	got := counts(t, brokers, "counts", 3)
	if len(got) != len(want) {
		t.Fatalf("%d words in the output, want %d", len(got), len(want))
	}
	for w, c := range want {
		if got[w] != c {
			t.Fatalf("word %s: %d, want %d", w, got[w], c)
		}
	}
	t.Logf("%d lines, %d kills (with 2, 5, 1, 5 workers, resumed at epochs %v, then a restore onto a new directory with 3): %d words exact, none repeated", n, kills, resumes, len(got))
}
