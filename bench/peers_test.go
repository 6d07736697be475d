package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"

	"github.com/flowkeep/flowkeep/internal/testserver"
)

// run is one timed process: wall time and peak RSS.
type run struct {
	wall time.Duration
	rss  int64 // bytes
	cpu  time.Duration
	out  []byte
}

func timed(b *testing.B, env []string, name string, args ...string) run {
	b.Helper()
	// Peak RSS through GNU time: a child Go starts directly inherits this
	// process's high-water mark (it execs from a vfork of this process).
	rssFile := filepath.Join(b.TempDir(), "rss")
	cmd := exec.Command(name, args...)
	if fileExists("/usr/bin/time") {
		cmd = exec.Command("/usr/bin/time", append([]string{"-f", "%M %U %S", "-o", rssFile, name}, args...)...)
	}
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out.String())
	}
	r := run{wall: time.Since(start), out: out.Bytes()}
	if kb, err := os.ReadFile(rssFile); err == nil {
		var user, sys float64
		fmt.Sscan(string(kb), &r.rss, &user, &sys)
		r.rss <<= 10
		r.cpu = time.Duration((user + sys) * float64(time.Second))
	}
	return r
}

// peer returns the path of a peer tool bench/run.sh installed (in
// FLOWKEEP_PEERS), or "".
func peer(name string) string {
	if d := os.Getenv("FLOWKEEP_PEERS"); d != "" {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// BenchmarkRestoreVerifyPeers prints issue 16's figures, side by side on
// the same 4 partitions and the same local S3 server (versitygw), medians
// of alternated rounds: flowbackup restore against the SDK's transfer
// manager downloading the partition files and `rclone copy` of them;
// flowbackup verify --deep against `restic check --read-data` (bytes read
// against bytes stored too); peak RSS of backup and restore at default
// settings; the second backup's bytes after 1% of keys changed. rclone and
// restic run when bench/run.sh installed them (FLOWKEEP_PEERS) or they are
// on PATH.
func BenchmarkRestoreVerifyPeers(b *testing.B) {
	ctx := context.Background()
	srv, bucket := versity(b)
	mb := partMB()
	work := b.TempDir()
	dir := filepath.Join(work, "rec")
	os.Mkdir(dir, 0o755)
	st, keys := buildPartitions(b, dir, mb)
	bin := filepath.Join(work, "flowbackup")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/flowkeep/flowkeep/cmd/flowbackup").CombinedOutput(); err != nil {
		b.Fatalf("build flowbackup: %v\n%s", err, out)
	}
	env := append(srv.S3Env(), "AWS_ENDPOINT_URL_S3="+srv.S3Endpoint())
	url := "s3://" + bucket + "/flowkeep"

	// flowbackup: the first backup, then 1% of keys change and a second.
	first := timed(b, env, bin, "backup", "-r", dir, "--to", url, "--json")
	changeOnePercent(b, st, keys)
	second := timed(b, env, bin, "backup", "-r", dir, "--to", url, "--json")
	st.Close()
	uploaded := func(out []byte) int64 {
		var res struct {
			Partitions []struct {
				UploadedBytes int64 `json:"uploaded_bytes"`
			} `json:"partitions"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			b.Fatalf("backup --json: %v\n%s", err, out)
		}
		var n int64
		for _, x := range res.Partitions {
			n += x.UploadedBytes
		}
		return n
	}
	firstBytes, secondBytes := uploaded(first.out), uploaded(second.out)

	// The raw files, uploaded once for the SDK and rclone to download.
	files, _ := filepath.Glob(filepath.Join(dir, "part-*.sqlite3"))
	var raw int64
	client := sdkClient(b, srv)
	tm := transfermanager.New(client, func(o *transfermanager.Options) { o.PartSizeBytes = 16 << 20; o.Concurrency = 8 })
	for _, f := range files {
		data, _ := os.ReadFile(f)
		raw += int64(len(data))
		if _, err := tm.UploadObject(ctx, &transfermanager.UploadObjectInput{Bucket: aws.String(bucket), Key: aws.String("raw/" + filepath.Base(f)), Body: bytes.NewReader(data)}); err != nil {
			b.Fatal(err)
		}
	}
	sdkDownload := func() time.Duration {
		dst := b.TempDir()
		start := time.Now()
		var wg sync.WaitGroup
		for _, f := range files {
			wg.Add(1)
			go func(name string) {
				defer wg.Done()
				out, err := os.Create(filepath.Join(dst, name))
				if err != nil {
					b.Error(err)
					return
				}
				defer out.Close()
				if _, err := tm.DownloadObject(ctx, &transfermanager.DownloadObjectInput{Bucket: aws.String(bucket), Key: aws.String("raw/" + name), WriterAt: out}); err != nil {
					b.Error(err)
				}
				out.Sync()
			}(filepath.Base(f))
		}
		wg.Wait()
		d := time.Since(start)
		os.RemoveAll(dst)
		return d
	}

	rclone, restic := peer("rclone"), peer("restic")
	rcloneEnv := append(env, "RCLONE_CONFIG_BENCH_TYPE=s3", "RCLONE_CONFIG_BENCH_PROVIDER=Other",
		"RCLONE_CONFIG_BENCH_ENDPOINT="+srv.S3Endpoint(), "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="+testserver.S3AccessKey,
		"RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="+testserver.S3SecretKey, "RCLONE_CONFIG_BENCH_REGION="+testserver.S3Region,
		"RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true")
	resticEnv := append(env, "RESTIC_REPOSITORY=s3:"+srv.S3Endpoint()+"/"+bucket+"/restic", "RESTIC_PASSWORD=bench",
		"RESTIC_CACHE_DIR="+filepath.Join(work, "restic-cache"))
	if restic != "" {
		timed(b, resticEnv, restic, "init")
		timed(b, resticEnv, restic, "backup", "--no-scan", "-q", dir)
	}

	var sdk, ours, rc, rcSync, rs, verify, check []time.Duration
	var restoreRSS, verifyRSS, checkRSS int64
	var verifyRead, verifyStored int64
	// Each round flushes the page cache before every run, untimed, so that
	// no run pays for the write-back of the one before it. rclone's copy is
	// not durable when it returns (it does not fsync; flowbackup syncs each
	// file before it names it): rclone+sync is its time to durable.
	flush := func() time.Duration { t := time.Now(); syscall.Sync(); return time.Since(t) }
	const rounds = 3
	for round := 0; round < rounds; round++ {
		flush()
		sdk = append(sdk, sdkDownload())
		if rclone != "" {
			dst := b.TempDir()
			flush()
			c := timed(b, rcloneEnv, rclone, "copy", "bench:"+bucket+"/raw", dst).wall
			rc, rcSync = append(rc, c), append(rcSync, c+flush())
			os.RemoveAll(dst)
		}
		dst := filepath.Join(b.TempDir(), "restored")
		flush()
		x := timed(b, env, bin, "restore", "--from", url, "--to", dst)
		ours, restoreRSS = append(ours, x.wall), max(restoreRSS, x.rss)
		os.RemoveAll(dst)
		if restic != "" {
			dst := b.TempDir()
			flush()
			rs = append(rs, timed(b, resticEnv, restic, "restore", "latest", "-q", "--target", dst).wall)
			os.RemoveAll(dst)
			flush()
			c := timed(b, resticEnv, restic, "check", "--read-data", "-q")
			check, checkRSS = append(check, c.wall), max(checkRSS, c.rss)
		}
		flush()
		v := timed(b, env, bin, "verify", "--from", url, "--deep", "--json")
		verify, verifyRSS = append(verify, v.wall), max(verifyRSS, v.rss)
		var rep struct {
			Status      string `json:"status"`
			BytesRead   int64  `json:"bytes_read"`
			BytesStored int64  `json:"bytes_stored"`
		}
		if err := json.Unmarshal(v.out, &rep); err != nil || rep.Status != "healthy" {
			b.Fatalf("verify --deep: %v\n%s", err, v.out)
		}
		verifyRead, verifyStored = rep.BytesRead, rep.BytesStored
	}
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	b.ReportMetric(mib(raw), "raw-MiB")
	b.ReportMetric(mib(firstBytes), "stored-MiB")
	b.ReportMetric(median(ours).Seconds()/median(sdk).Seconds(), "restore/sdk")
	b.ReportMetric(mib(restoreRSS), "restore-RSS-MiB")
	b.ReportMetric(mib(first.rss), "backup-RSS-MiB")
	b.ReportMetric(100*float64(secondBytes)/float64(firstBytes), "second/first-bytes-%")
	b.ReportMetric(float64(verifyRead)/float64(verifyStored), "verify-read/stored")
	b.ReportMetric(mib(verifyRSS), "verify-RSS-MiB")
	b.ReportMetric(median(verify).Seconds(), "verify-s")
	b.ReportMetric(median(ours).Seconds(), "restore-s")
	if rclone != "" {
		b.ReportMetric(median(ours).Seconds()/median(rc).Seconds(), "restore/rclone")
		b.ReportMetric(median(ours).Seconds()/median(rcSync).Seconds(), "restore/rclone+sync")
	}
	if restic != "" {
		b.ReportMetric(median(verify).Seconds()/median(check).Seconds(), "verify/restic-check")
		b.ReportMetric(median(ours).Seconds()/median(rs).Seconds(), "restore/restic-restore")
		b.ReportMetric(mib(checkRSS), "restic-check-RSS-MiB")
	}
	fmt.Fprintf(os.Stderr, "rounds (s): sdk %v rclone %v rclone+sync %v flowbackup-restore %v restic-restore %v verify %v restic-check %v\n",
		secs(sdk), secs(rc), secs(rcSync), secs(ours), secs(rs), secs(verify), secs(check))
}

func secs(ds []time.Duration) []string {
	var out []string
	for _, d := range ds {
		out = append(out, fmt.Sprintf("%.2f", d.Seconds()))
	}
	return out
}
