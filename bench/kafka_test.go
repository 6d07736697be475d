package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BenchmarkKafkaSource: issue 17's figure. The same 1M lines are read by
// wordcount (2 workers, recovery off) from a 6-partition topic on an
// in-process Kafka-protocol broker (kfake, over real connections) and from
// 6 files, in alternated rounds; it prints both rates and their ratio. The
// broker shares the machine's two cores with the flow.
func BenchmarkKafkaSource(b *testing.B) {
	in, _ := wordInput(b)
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateTopic("lines", 6, nil); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	files := make([]*bufio.Writer, 6)
	for i := range files {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("part-%d.txt", i)))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		files[i] = bufio.NewWriter(f)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.MaxBufferedRecords(1<<16))
	if err != nil {
		b.Fatal(err)
	}
	src, _ := os.Open(in)
	sc := bufio.NewScanner(src)
	var wg sync.WaitGroup
	lines := 0
	for sc.Scan() {
		line := sc.Text()
		files[lines%6].WriteString(line + "\n")
		wg.Add(1)
		cl.Produce(context.Background(), &kgo.Record{Topic: "lines", Partition: int32(lines % 6), Value: []byte(line)}, func(_ *kgo.Record, err error) {
			if err != nil {
				b.Error(err)
			}
			wg.Done()
		})
		lines++
	}
	wg.Wait()
	src.Close()
	cl.Close()
	for _, w := range files {
		w.Flush()
	}
	url := "kafka://" + strings.Join(c.ListenAddrs(), ",") + "/lines"
	var fromKafka, fromFiles []time.Duration
	b.ResetTimer()
	for round := 0; round < 3; round++ {
		k, _ := runWordcount(b, url, b.TempDir(), 2, nil, time.Second)
		f, _ := runWordcount(b, dir, b.TempDir(), 2, nil, time.Second)
		fromKafka, fromFiles = append(fromKafka, k), append(fromFiles, f)
	}
	k, f := median(fromKafka), median(fromFiles)
	b.ReportMetric(float64(lines)/k.Seconds(), "kafka-msgs/s")
	b.ReportMetric(float64(lines)/f.Seconds(), "file-lines/s")
	b.ReportMetric(f.Seconds()/k.Seconds(), "kafka/file-rate")
}
