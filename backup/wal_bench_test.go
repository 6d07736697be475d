package backup_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/memstore"
	"github.com/flowkeep/flowkeep/recovery"
)

// throttled is a store whose uploads share a bandwidth (bytes/s).
type throttled struct {
	backup.Store
	rate float64
	mu   sync.Mutex
	next time.Time
}

func (t *throttled) Put(ctx context.Context, key string, b []byte) error {
	t.mu.Lock()
	now := time.Now()
	if t.next.Before(now) {
		t.next = now
	}
	t.next = t.next.Add(time.Duration(float64(len(b)) / t.rate * float64(time.Second)))
	wait := t.next.Sub(now)
	t.mu.Unlock()
	select {
	case <-time.After(wait):
	case <-ctx.Done():
		return ctx.Err()
	}
	return t.Store.Put(ctx, key, b)
}

// BenchmarkBaseCaptureWAL measures how far a partition's WAL grows while a
// base backup uploads at 10 MB/s and the flow keeps committing, with the
// base staged locally (the read transaction ends when the local copy does)
// and uploaded straight from the partition (it ends with the upload):
//
//	go test ./backup -run '^$' -bench BaseCaptureWAL -benchtime 1x -v
func BenchmarkBaseCaptureWAL(b *testing.B) {
	ctx := context.Background()
	results := map[bool][2]float64{}
	for _, staged := range []bool{false, true} {
		dir := b.TempDir()
		if err := recovery.Init(ctx, dir, 1); err != nil {
			b.Fatal(err)
		}
		st, err := recovery.Open(ctx, dir, recovery.Options{FlowName: "wal", Intervals: recovery.Intervals{Snapshot: time.Second, Backup: time.Hour}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.Begin(ctx, 1); err != nil {
			b.Fatal(err)
		}
		val := func() []byte {
			r := make([]byte, 100)
			rand.Read(r)
			return []byte(hex.EncodeToString(r))
		}
		e := recovery.Epoch(1)
		commit := func(from, n int) {
			rows := make([]recovery.Row, n)
			for i := range rows {
				rows[i] = recovery.Row{Step: "s", Key: recovery.StateKey(fmt.Sprintf("k%08d", from+i)), Epoch: e, Value: val()}
			}
			if err := st.Commit(ctx, 0, e+1, rows); err != nil {
				b.Fatal(err)
			}
			if err := st.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			e++
		}
		for i := 0; i < 60; i++ {
			commit(i*10_000, 10_000) // ~120 MiB of partition
		}
		wal := filepath.Join(dir, "part-0.sqlite3-wal")
		info, _ := os.Stat(filepath.Join(dir, "part-0.sqlite3"))
		stop := make(chan struct{})
		var maxWAL atomic.Int64
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // the flow: 2000 changed keys every 100 ms
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				commit(n*2000%600_000, 2000)
			}
		}()
		go func() {
			defer wg.Done()
			for {
				if fi, err := os.Stat(wal); err == nil && fi.Size() > maxWAL.Load() {
					maxWAL.Store(fi.Size())
				}
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		}()
		undo := backup.SetStageBase(staged)
		began := time.Now()
		res, err := backup.BackupDir(ctx, &throttled{Store: memstore.New(), rate: 10e6}, dir, backup.Options{})
		took := time.Since(began)
		undo()
		close(stop)
		wg.Wait()
		st.Close()
		if err != nil || res[0].Kind != "base" {
			b.Fatalf("backup: %v", err)
		}
		mode := "straight from the partition"
		if staged {
			mode = "staged locally"
		}
		b.Logf("%-28s partition %5.1f MiB, uploaded %5.1f MB in %5.2fs, WAL grew to %6.1f MiB", mode,
			float64(info.Size())/(1<<20), float64(res[0].BytesUploaded)/1e6, took.Seconds(), float64(maxWAL.Load())/(1<<20))
		results[staged] = [2]float64{float64(maxWAL.Load()), took.Seconds()}
	}
	b.Logf("staged/straight: WAL peak %.2fx, backup time %.2fx", results[true][0]/results[false][0], results[true][1]/results[false][1])
	b.ReportMetric(results[true][0]/results[false][0], "wal-ratio")
}
