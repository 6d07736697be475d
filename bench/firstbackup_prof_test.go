package bench

import (
	"context"
	"os"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/s3"
	"github.com/flowkeep/flowkeep/internal/testserver"
	"github.com/flowkeep/flowkeep/restore"
)

// BenchmarkFirstBackupProfile: one first backup of the benchmark's
// partitions to versitygw, in process; FLOWKEEP_BENCH_CPUPROFILE=FILE
// writes a CPU profile of the backup alone (not of building the
// partitions).
func BenchmarkFirstBackupProfile(b *testing.B) {
	ctx := context.Background()
	srv, bucket := versity(b)
	dir := filepath.Join(b.TempDir(), "rec")
	if keep := os.Getenv("FLOWKEEP_BENCH_KEEP_DIR"); keep != "" {
		// A copy of the partitions stays there, for runs of the CLIs.
		dir = keep
	}
	os.Mkdir(dir, 0o755)
	st, _ := buildPartitions(b, dir, partMB())
	st.Close()
	s3st, err := s3.New(ctx, bucket, "p", s3.Options{Endpoint: srv.S3Endpoint(), PathStyle: true, Region: testserver.S3Region})
	if err != nil {
		b.Fatal(err)
	}
	store := &counting{Store: s3st}
	b.ResetTimer()
	if path := os.Getenv("FLOWKEEP_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	t := time.Now()
	res, err := backup.BackupDir(ctx, store, dir, backup.Options{})
	if err != nil {
		b.Fatal(err)
	}
	var up int64
	for _, r := range res {
		up += r.BytesUploaded
	}
	b.Logf("first backup %.2fs, uploaded %d MB, puts %d gets %d lists %d", time.Since(t).Seconds(), up>>20, store.puts.Load(), store.gets.Load(), store.lists.Load())
	// FLOWKEEP_BENCH_RESTORE_CPUPROFILE=FILE: the restore of that backup,
	// profiled alone.
	if path := os.Getenv("FLOWKEEP_BENCH_RESTORE_CPUPROFILE"); path != "" {
		pprof.StopCPUProfile()
		syscall.Sync()
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
		t := time.Now()
		if _, err := restore.Restore(ctx, s3st, filepath.Join(b.TempDir(), "restored"), restore.Options{}); err != nil {
			b.Fatal(err)
		}
		b.Logf("restore %.2fs", time.Since(t).Seconds())
	}
}
