package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/testserver"
)

// BenchmarkFirstBackupPeers prints issue 32's figures, side by side on the
// same 4 partitions and one local S3 server (versitygw) behind a proxy
// that counts requests: the first backup's wall and CPU time against
// `rclone sync` of the partition files and `restic backup`, each to a
// fresh prefix, in alternated order over 3 rounds (medians); requests per
// GB of partitions for the first backup and for a restore against
// restic's; restore wall time against `rclone copy` followed by `sync`
// (rclone does not fsync; flowbackup syncs every file before it names
// it). rclone and restic run when bench/run.sh installed them
// (FLOWKEEP_PEERS) or they are on PATH; without them only flowbackup's
// own figures print.
func BenchmarkFirstBackupPeers(b *testing.B) {
	srv, bucket := versity(b)
	counter := countRequests(b, srv.S3Endpoint())
	work := b.TempDir()
	dir := filepath.Join(work, "rec")
	os.Mkdir(dir, 0o755)
	st, _ := buildPartitions(b, dir, partMB())
	st.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "part-*.sqlite3"))
	var raw int64
	for _, f := range files {
		fi, _ := os.Stat(f)
		raw += fi.Size()
	}
	gb := float64(raw) / 1e9
	bin := filepath.Join(work, "flowbackup")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/flowkeep/flowkeep/cmd/flowbackup").CombinedOutput(); err != nil {
		b.Fatalf("build flowbackup: %v\n%s", err, out)
	}
	env := append(srv.S3Env(), "AWS_ENDPOINT_URL_S3="+counter.URL)
	rclone, restic := peer("rclone"), peer("restic")
	rcloneEnv := append(env, "RCLONE_CONFIG_BENCH_TYPE=s3", "RCLONE_CONFIG_BENCH_PROVIDER=Other",
		"RCLONE_CONFIG_BENCH_ENDPOINT="+counter.URL, "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="+testserver.S3AccessKey,
		"RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="+testserver.S3SecretKey, "RCLONE_CONFIG_BENCH_REGION="+testserver.S3Region,
		"RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true")
	resticEnv := func(round int) []string {
		return append(env, fmt.Sprintf("RESTIC_REPOSITORY=s3:%s/%s/restic-%d", counter.URL, bucket, round), "RESTIC_PASSWORD=bench",
			"RESTIC_CACHE_DIR="+filepath.Join(work, fmt.Sprintf("restic-cache-%d", round)))
	}
	flush := func() time.Duration { t := time.Now(); syscall.Sync(); return time.Since(t) }

	type tool struct {
		name string
		run  func(round int) run
	}
	tools := []tool{{"flowbackup", func(r int) run {
		return timed(b, env, bin, "backup", "-r", dir, "--to", fmt.Sprintf("s3://%s/fb-%d", bucket, r))
	}}}
	if rclone != "" {
		tools = append(tools, tool{"rclone", func(r int) run {
			return timed(b, rcloneEnv, rclone, "sync", dir, fmt.Sprintf("bench:%s/rc-%d", bucket, r))
		}})
	}
	if restic != "" {
		tools = append(tools, tool{"restic", func(r int) run {
			timed(b, resticEnv(r), restic, "init")
			counter.take()
			return timed(b, resticEnv(r), restic, "backup", "--no-scan", "-q", dir)
		}})
	}
	walls, cpus := map[string][]float64{}, map[string][]float64{}
	requests := map[string]int{}
	const rounds = 3
	for r := 0; r < rounds; r++ {
		for i := range tools {
			t := tools[(i+r)%len(tools)]
			flush()
			counter.take()
			x := t.run(r)
			n, by := counter.take()
			walls[t.name] = append(walls[t.name], x.wall.Seconds())
			cpus[t.name] = append(cpus[t.name], x.cpu.Seconds())
			if r == 0 {
				requests[t.name] = n
				fmt.Fprintf(os.Stderr, "first backup requests, %s: %d (%s)\n", t.name, n, by)
			}
		}
	}
	// Restores of round 0's backups, alternated the same way.
	restores := []tool{{"flowbackup", func(int) run {
		dst := filepath.Join(b.TempDir(), "restored")
		x := timed(b, env, bin, "restore", "--from", fmt.Sprintf("s3://%s/fb-0", bucket), "--to", dst)
		os.RemoveAll(dst)
		return x
	}}}
	if rclone != "" {
		restores = append(restores, tool{"rclone", func(int) run {
			dst := b.TempDir()
			x := timed(b, rcloneEnv, rclone, "copy", fmt.Sprintf("bench:%s/rc-0", bucket), dst)
			x.wall += flush() // durable, as flowbackup's restore is when it returns
			os.RemoveAll(dst)
			return x
		}})
	}
	if restic != "" {
		restores = append(restores, tool{"restic", func(int) run {
			dst := b.TempDir()
			x := timed(b, resticEnv(0), restic, "restore", "latest", "-q", "--target", dst)
			os.RemoveAll(dst)
			return x
		}})
	}
	rwalls := map[string][]float64{}
	restoreRequests := map[string]int{}
	for r := 0; r < rounds; r++ {
		for i := range restores {
			t := restores[(i+r)%len(restores)]
			flush()
			counter.take()
			x := t.run(r)
			n, by := counter.take()
			rwalls[t.name] = append(rwalls[t.name], x.wall.Seconds())
			if r == 0 {
				restoreRequests[t.name] = n
				fmt.Fprintf(os.Stderr, "restore requests, %s: %d (%s)\n", t.name, n, by)
			}
		}
	}
	med := func(xs []float64) float64 { m, _, _ := medianSpread(xs); return m }
	b.ReportMetric(float64(raw)/(1<<20), "raw-MiB")
	b.ReportMetric(med(walls["flowbackup"]), "backup-s")
	b.ReportMetric(med(cpus["flowbackup"]), "backup-cpu-s")
	b.ReportMetric(float64(requests["flowbackup"])/gb, "backup-req/GB")
	b.ReportMetric(float64(restoreRequests["flowbackup"])/gb, "restore-req/GB")
	b.ReportMetric(med(rwalls["flowbackup"]), "restore-s")
	if rclone != "" {
		b.ReportMetric(med(walls["flowbackup"])/med(walls["rclone"]), "backup/rclone-sync")
		b.ReportMetric(med(cpus["flowbackup"])/med(cpus["rclone"]), "backup-cpu/rclone")
		b.ReportMetric(med(rwalls["flowbackup"])/med(rwalls["rclone"]), "restore/rclone+sync")
	}
	if restic != "" {
		b.ReportMetric(med(walls["flowbackup"])/med(walls["restic"]), "backup/restic")
		b.ReportMetric(float64(requests["flowbackup"])/float64(requests["restic"]), "backup-req/restic")
		b.ReportMetric(float64(restoreRequests["flowbackup"])/float64(restoreRequests["restic"]), "restore-req/restic")
	}
	fmt.Fprintf(os.Stderr, "rounds (s): backup %v, restore %v\n", walls, rwalls)
}
