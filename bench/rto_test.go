package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRTO prints issue 32's recovery time, end to end: from
// `flowbackup restore` starting on an empty machine (an empty directory,
// the page cache flushed) to the restored flow's first new durable epoch,
// as `flowrun recovery inspect` sees it, with its parts: the restore, and
// the resumed run's start to that epoch. The state is a wordcount of N
// distinct keys (FLOWKEEP_BENCH_RTO_KEYS, default 3.9M: the size of the
// partitions issue 32 measured) in 4 partitions, -w 2 -s 1s -b 2s, backed
// up to versitygw; more input follows, so the resumed run goes on. Medians
// of 3 rounds.
func BenchmarkRTO(b *testing.B) {
	srv, bucket := versity(b)
	keys := 3_900_000
	if v, err := strconv.Atoi(os.Getenv("FLOWKEEP_BENCH_RTO_KEYS")); err == nil && v > 0 {
		keys = v
	}
	work := b.TempDir()
	flowrun := buildFlowrun(b)
	flowbackup := filepath.Join(work, "flowbackup")
	if out, err := exec.Command("go", "build", "-o", flowbackup, "../cmd/flowbackup").CombinedOutput(); err != nil {
		b.Fatalf("build flowbackup: %v\n%s", err, out)
	}
	in := filepath.Join(work, "in.txt")
	writeDistinct(b, in, 0, keys)
	rec := filepath.Join(work, "rec")
	os.Mkdir(rec, 0o755)
	runFlowrun(b, flowrun, "recovery", "init", rec, "4")
	out := filepath.Join(work, "out.csv")
	runFlowrun(b, flowrun, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "2s", "-w", "2")
	env := append(srv.S3Env(), "AWS_ENDPOINT_URL_S3="+srv.S3Endpoint())
	url := fmt.Sprintf("s3://%s/rto", bucket)
	timed(b, env, flowbackup, "backup", "-r", rec, "--to", url)
	var raw int64
	files, _ := filepath.Glob(filepath.Join(rec, "part-*.sqlite3"))
	for _, f := range files {
		fi, _ := os.Stat(f)
		raw += fi.Size()
	}
	// The restored flow reads on: 4M more lines (a run of several epochs).
	more := filepath.Join(work, "more.txt")
	copyDir(b, in, more)
	writeDistinct(b, more, keys, 4_000_000)

	var restores, resumes, rtos []float64
	for round := 0; round < 3; round++ {
		dst := filepath.Join(work, fmt.Sprintf("restored-%d", round))
		// The output file, copied as the new machine would have it (a
		// copy of the flow's output continues under its own name).
		odir := filepath.Join(work, fmt.Sprintf("out-%d", round))
		os.Mkdir(odir, 0o755)
		o := filepath.Join(odir, "out.csv")
		copyDir(b, out, o)
		syscall.Sync()
		start := time.Now()
		timed(b, env, flowbackup, "restore", "--from", url, "--to", dst)
		restored := time.Now()
		at := inspectHi(flowrun, dst)
		run := exec.Command(flowrun, "run", "wordcount", "-i", more, "-o", o, "-r", dst, "-s", "1s", "-b", "2s", "-w", "2")
		if err := run.Start(); err != nil {
			b.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- run.Wait() }()
		for inspectHi(flowrun, dst) <= at {
			select {
			case err := <-exited:
				b.Fatalf("the restored flow ended before a new durable epoch: %v", err)
			default:
			}
			if time.Since(restored) > 5*time.Minute {
				run.Process.Kill()
				<-exited
				b.Fatal("no new durable epoch 5 minutes after the restore")
			}
			time.Sleep(20 * time.Millisecond)
		}
		durable := time.Now()
		run.Process.Signal(syscall.SIGKILL)
		<-exited
		restores = append(restores, restored.Sub(start).Seconds())
		resumes = append(resumes, durable.Sub(restored).Seconds())
		rtos = append(rtos, durable.Sub(start).Seconds())
		os.RemoveAll(dst)
		os.RemoveAll(odir)
	}
	med := func(xs []float64) float64 { m, _, _ := medianSpread(xs); return m }
	b.ReportMetric(float64(raw)/(1<<20), "partitions-MiB")
	b.ReportMetric(float64(keys), "keys")
	b.ReportMetric(med(rtos), "rto-s")
	b.ReportMetric(med(restores), "restore-s")
	b.ReportMetric(med(resumes), "start-to-durable-s")
	fmt.Fprintf(os.Stderr, "rounds (s): rto %v, restore %v, start to first new durable epoch %v\n", rtos, restores, resumes)
}
