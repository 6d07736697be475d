package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/s3"
	"github.com/flowkeep/flowkeep/internal/testserver"
	"github.com/flowkeep/flowkeep/restore"
)

// BenchmarkEncryptionCost prints issue 18's figure: first-backup and
// restore throughput with age encryption on, relative to off, against
// versitygw, in one run. Each round backs up the same 4 partitions to a
// fresh prefix twice (plaintext, encrypted; the order alternates) and
// restores each; the ratios are the medians of the rounds' ratios, of wall
// time and of this process's CPU time (the server's is not counted).
func BenchmarkEncryptionCost(b *testing.B) {
	ctx := context.Background()
	srv, bucket := versity(b)
	dir := b.TempDir()
	st, _ := buildPartitions(b, dir, partMB())
	defer st.Close()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	keys := backup.NewOpener([]age.Identity{id})
	var up, down, upCPU, downCPU, stored []float64
	for round := 0; round < 5; round++ {
		took := map[bool][2]time.Duration{}
		cpu := map[bool][2]time.Duration{}
		bytes := map[bool]int64{}
		for _, sealed := range []bool{round%2 == 1, round%2 == 0} {
			s, err := s3.New(ctx, bucket, fmt.Sprintf("r%d-%v", round, sealed), s3.Options{Endpoint: srv.S3Endpoint(), PathStyle: true, Region: testserver.S3Region})
			if err != nil {
				b.Fatal(err)
			}
			o := backup.Options{}
			if sealed {
				o.Recipients = []age.Recipient{id.Recipient()}
			}
			t0, c0 := time.Now(), cpuTime()
			res, err := backup.BackupDir(ctx, s, dir, o)
			if err != nil {
				b.Fatal(err)
			}
			t1, c1 := time.Now(), cpuTime()
			for _, r := range res {
				bytes[sealed] += r.BytesUploaded
			}
			if _, err := restore.Restore(ctx, s, filepath.Join(b.TempDir(), "restored"), restore.Options{Keys: keys}); err != nil {
				b.Fatal(err)
			}
			took[sealed] = [2]time.Duration{t1.Sub(t0), time.Since(t1)}
			cpu[sealed] = [2]time.Duration{c1 - c0, cpuTime() - c1}
		}
		upCPU = append(upCPU, cpu[false][0].Seconds()/cpu[true][0].Seconds())
		downCPU = append(downCPU, cpu[false][1].Seconds()/cpu[true][1].Seconds())
		up = append(up, took[false][0].Seconds()/took[true][0].Seconds())
		down = append(down, took[false][1].Seconds()/took[true][1].Seconds())
		stored = append(stored, float64(bytes[true])/float64(bytes[false]))
		b.Logf("round %d: backup %v plain, %v encrypted; restore %v plain, %v encrypted", round,
			took[false][0].Round(time.Millisecond), took[true][0].Round(time.Millisecond), took[false][1].Round(time.Millisecond), took[true][1].Round(time.Millisecond))
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(float64(partMB()), "MiB/partition")
	b.ReportMetric(median(up), "backup-throughput-encrypted/plain")
	b.ReportMetric(median(down), "restore-throughput-encrypted/plain")
	b.ReportMetric(median(upCPU), "backup-per-CPU-second-encrypted/plain")
	b.ReportMetric(median(downCPU), "restore-per-CPU-second-encrypted/plain")
	b.ReportMetric(median(stored), "stored-bytes-encrypted/plain")
}
