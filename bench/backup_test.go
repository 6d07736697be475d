package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/s3"
	"github.com/flowkeep/flowkeep/internal/testserver"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

// partMB is the size of each benchmark partition (FLOWKEEP_BENCH_PART_MB,
// default 256 as the issues ask).
func partMB() int {
	if v, err := strconv.Atoi(os.Getenv("FLOWKEEP_BENCH_PART_MB")); err == nil && v > 0 {
		return v
	}
	return 256
}

const rowValue = 100 // bytes of state per key: letters, compressible like real state

// buildPartitions fills 4 partitions to about mb MiB each and returns the
// store writing them and the keys.
func buildPartitions(b *testing.B, dir string, mb int) (*recovery.Store, []recovery.StateKey) {
	b.Helper()
	ctx := context.Background()
	if err := recovery.Init(ctx, dir, 4); err != nil {
		b.Fatal(err)
	}
	st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "bench", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.Begin(ctx, 1); err != nil {
		b.Fatal(err)
	}
	// ~150 bytes of file per row (key, value, b-tree overhead).
	n := mb << 20 / 150 * 4
	keys := make([]recovery.StateKey, n)
	r := rand.New(rand.NewSource(1))
	rows := make([]recovery.Row, 0, 100_000)
	flush := func(e recovery.Epoch) {
		if err := st.Commit(ctx, 0, e, rows); err != nil {
			b.Fatal(err)
		}
		rows = rows[:0]
	}
	for i := range keys {
		keys[i] = recovery.StateKey(fmt.Sprintf("key-%09d", i))
		rows = append(rows, recovery.Row{Step: "bench.state", Key: keys[i], Epoch: 1, Value: letters(r, rowValue)})
		if len(rows) == cap(rows) {
			flush(1)
			rows = make([]recovery.Row, 0, 100_000)
		}
	}
	flush(2)
	if err := st.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	return st, keys
}

// changeOnePercent gives 1% of the keys (drawn at random) a new value in
// epoch 2 and makes it durable.
func changeOnePercent(b *testing.B, st *recovery.Store, keys []recovery.StateKey) {
	b.Helper()
	ctx := context.Background()
	r := rand.New(rand.NewSource(2))
	var rows []recovery.Row
	for i := 0; i < len(keys)/100; i++ {
		rows = append(rows, recovery.Row{Step: "bench.state", Key: keys[r.Intn(len(keys))], Epoch: 2, Value: letters(r, rowValue)})
	}
	if err := st.Commit(ctx, 0, 3, rows); err != nil {
		b.Fatal(err)
	}
	if err := st.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}

func letters(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + r.Intn(16))
	}
	return b
}

// counting counts requests by kind.
type counting struct {
	backup.Store
	puts, gets, lists atomic.Int64
}

func (c *counting) Put(ctx context.Context, k string, d []byte) error {
	c.puts.Add(1)
	return c.Store.Put(ctx, k, d)
}
func (c *counting) PutIfAbsent(ctx context.Context, k string, d []byte) error {
	c.puts.Add(1)
	return c.Store.PutIfAbsent(ctx, k, d)
}
func (c *counting) Get(ctx context.Context, k string) (io.ReadCloser, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, k)
}
func (c *counting) List(ctx context.Context, p, after string, fn func(backup.ObjectInfo) error) error {
	c.lists.Add(1)
	return c.Store.List(ctx, p, after, fn)
}

func versity(b *testing.B) (*testserver.Server, string) {
	b.Helper()
	srv, err := testserver.StartVersity()
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(srv.Stop)
	srv.SetS3Env()
	bucket := testserver.NewName("bench")
	if err := srv.CreateS3Bucket(context.Background(), bucket); err != nil {
		b.Fatal(err)
	}
	return srv, bucket
}

func sdkClient(b *testing.B, srv *testserver.Server) *awss3.Client {
	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion(testserver.S3Region))
	if err != nil {
		b.Fatal(err)
	}
	return awss3.NewFromConfig(cfg, func(o *awss3.Options) {
		o.BaseEndpoint = aws.String(srv.S3Endpoint())
		o.UsePathStyle = true
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.DisableLogOutputChecksumValidationSkipped = true
	})
}

// BenchmarkBackupRestore prints issue 4's and 5's figures against versitygw:
// first-backup throughput relative to uploading the partition files with the
// SDK's transfer manager alone; the second backup's bytes, PUTs and LISTs
// after 1% of keys changed; restore throughput relative to downloading the
// same objects to files with the SDK alone (as `aws s3 cp` would).
func BenchmarkBackupRestore(b *testing.B) {
	ctx := context.Background()
	srv, bucket := versity(b)
	mb := partMB()
	dir := b.TempDir()
	st, keys := buildPartitions(b, dir, mb)
	defer st.Close()
	var raw int64
	files, _ := filepath.Glob(filepath.Join(dir, "part-*.sqlite3"))
	for _, f := range files {
		fi, _ := os.Stat(f)
		raw += fi.Size()
		wal, _ := os.Stat(f + "-wal")
		if wal != nil {
			raw += wal.Size()
		}
	}
	client := sdkClient(b, srv)

	// SDK alone: upload the partition files (as a plain copy would).
	up := transfermanager.New(client, func(o *transfermanager.Options) { o.PartSizeBytes = 16 << 20; o.Concurrency = 8 })
	sdkStart := time.Now()
	var wg sync.WaitGroup
	for _, f := range files {
		wg.Add(1)
		go func(f string) {
			defer wg.Done()
			data, _ := os.ReadFile(f)
			if _, err := up.UploadObject(ctx, &transfermanager.UploadObjectInput{Bucket: aws.String(bucket), Key: aws.String("sdk/" + filepath.Base(f)), Body: bytes.NewReader(data)}); err != nil {
				b.Error(err)
			}
		}(f)
	}
	wg.Wait()
	sdkUp := time.Since(sdkStart)

	s3st, err := s3.New(ctx, bucket, "flowkeep", s3.Options{Endpoint: srv.S3Endpoint(), PathStyle: true, Region: testserver.S3Region})
	if err != nil {
		b.Fatal(err)
	}
	store := &counting{Store: s3st}
	t1 := time.Now()
	first, err := backup.BackupDir(ctx, store, dir, backup.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ourUp := time.Since(t1)
	var firstBytes int64
	for _, r := range first {
		firstBytes += r.BytesUploaded
	}

	// Change 1% of keys and back up again.
	changeOnePercent(b, st, keys)
	store.puts.Store(0)
	store.lists.Store(0)
	second, err := backup.BackupDir(ctx, store, dir, backup.Options{})
	if err != nil {
		b.Fatal(err)
	}
	var secondBytes, secondChunks int64
	for _, r := range second {
		secondBytes += r.BytesUploaded
		secondChunks += r.ObjectsUploaded
	}

	// Restore vs downloading the same objects with the SDK alone.
	plan, err := restore.PlanFrom(ctx, s3st, restore.PlanOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var objs []backup.Object
	for _, m := range plan.Chosen {
		objs = append(objs, m.Objects()...)
	}
	dlDir := b.TempDir()
	sdkDown := time.Now()
	var next atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(objs) {
					return
				}
				out, err := client.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("flowkeep/" + backup.ChunkKey(objs[i].SHA256))})
				if err != nil {
					b.Error(err)
					return
				}
				f, err := os.Create(filepath.Join(dlDir, objs[i].SHA256))
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(f, out.Body)
				f.Close()
				out.Body.Close()
			}
		}()
	}
	wg.Wait()
	sdkDl := time.Since(sdkDown)
	t2 := time.Now()
	if _, err := restore.Restore(ctx, s3st, filepath.Join(b.TempDir(), "restored"), restore.Options{}); err != nil {
		b.Fatal(err)
	}
	ourDl := time.Since(t2)
	// The same restore from the first backups alone (full images, no delta
	// to lay over them).
	seconds := map[string]bool{}
	for _, r := range second {
		seconds[r.Manifest.ID] = true
	}
	t3 := time.Now()
	if _, err := restore.Restore(ctx, s3st, filepath.Join(b.TempDir(), "restored"), restore.Options{Plan: restore.PlanOptions{Exclude: seconds}}); err != nil {
		b.Fatal(err)
	}
	baseDl := time.Since(t3)
	floor := verifyFloor(b, dlDir, objs)

	mib := float64(raw) / (1 << 20)
	b.ReportMetric(float64(mb), "MiB/partition")
	b.ReportMetric(mib/sdkUp.Seconds(), "sdk-upload-MiB/s")
	b.ReportMetric(mib/ourUp.Seconds(), "backup-MiB/s")
	b.ReportMetric(sdkUp.Seconds()/ourUp.Seconds(), "backup/sdk-upload")
	b.ReportMetric(100*float64(secondBytes)/float64(firstBytes), "second/first-bytes-%")
	b.ReportMetric(float64(store.puts.Load()), "second-PUTs")
	b.ReportMetric(float64(secondChunks), "second-new-chunks")
	b.ReportMetric(float64(store.lists.Load()), "second-LISTs")
	b.ReportMetric(mib/ourDl.Seconds(), "restore-MiB/s")
	b.ReportMetric(sdkDl.Seconds()/ourDl.Seconds(), "restore/sdk-download")
	b.ReportMetric(sdkDl.Seconds()/baseDl.Seconds(), "restore-full-images/sdk-download")
	b.ReportMetric(sdkDl.Seconds()/floor.Seconds(), "decompress+sha256-only/sdk-download")
}

// verifyFloor times what any verifying restore must do at least: decompress
// every object and check its sha256, in memory, on all cores, with no disk
// and no network. Its ratio to the SDK download is a ceiling for restore's.
func verifyFloor(b *testing.B, dlDir string, objs []backup.Object) time.Duration {
	zs := make([][]byte, len(objs))
	for i, o := range objs {
		z, err := os.ReadFile(filepath.Join(dlDir, o.SHA256))
		if err != nil {
			b.Fatal(err)
		}
		zs[i] = z
	}
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, backup.ChunkSize)
			for i := int(next.Add(1) - 1); i < len(objs); i = int(next.Add(1) - 1) {
				out, err := backup.Decompress(buf, zs[i], objs[i].Size)
				if err != nil || backup.SumHex(out) != objs[i].SHA256 {
					b.Errorf("object %d does not verify: %v", i, err)
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkVerify1000Backups: issue 5's figure, a quick verify of 1000
// backups (manifests naming the same chunks) on versitygw (target < 5 s).
func BenchmarkVerify1000Backups(b *testing.B) {
	ctx := context.Background()
	srv, bucket := versity(b)
	dir := b.TempDir()
	st, _ := buildPartitions(b, dir, 4)
	st.Close()
	s3st, err := s3.New(ctx, bucket, "v", s3.Options{Endpoint: srv.S3Endpoint(), PathStyle: true, Region: testserver.S3Region})
	if err != nil {
		b.Fatal(err)
	}
	res, err := backup.BackupDir(ctx, s3st, dir, backup.Options{})
	if err != nil {
		b.Fatal(err)
	}
	// 249 more backups of each partition, as manifests over the same chunks.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, r := range res {
		for i := 1; i < 250; i++ {
			m := *r.Manifest
			m.ID = backup.NewBackupID(m.Created.Add(time.Duration(i) * time.Millisecond))
			data, _ := m.Marshal()
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if err := s3st.Put(ctx, backup.ManifestKey(m.Flow.UID, m.Partition.Index, m.ID), data); err != nil {
					b.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep, err := restore.Verify(ctx, s3st, restore.VerifyOptions{Workers: 32})
		if err != nil {
			b.Fatal(err)
		}
		if rep.Checked != 1000 || rep.Status != restore.StatusHealthy {
			b.Fatalf("checked %d, status %s: %+v", rep.Checked, rep.Status, rep.Problems)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "verify-s")
}
