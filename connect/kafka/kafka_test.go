package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowkeep/flowkeep/core"
)

// broker starts an in-process Kafka-protocol broker (kfake) with topics of
// the given partition counts; clients reach it over real connections.
func broker(t testing.TB, topics map[string]int32) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	for name, n := range topics {
		if err := c.CreateTopic(name, n, nil); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func produce(t testing.TB, brokers []string, topic string, partition int32, values ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var rs []*kgo.Record
	for _, v := range values {
		rs = append(rs, &kgo.Record{Topic: topic, Partition: partition, Value: []byte(v)})
	}
	if err := cl.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// readAll reads a partition's committed records (read_committed).
func readAll(t testing.TB, brokers []string, topic string, partition int32) []*kgo.Record {
	t.Helper()
	src := Source[*kgo.Record]{Brokers: brokers, Topics: []string{topic}, Decode: func(r *kgo.Record) (*kgo.Record, error) { return r, nil }}
	p, err := src.Open(context.Background(), partName(topic, partition), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	return drain(t, p)
}

// drain reads a partition to its end.
func drain[T any](t testing.TB, p core.SourcePartition[T]) []T {
	t.Helper()
	var out []T
	for {
		b, err := p.NextBatch(context.Background(), 100*time.Millisecond)
		out = append(out, b...)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// The port of Bytewax's test_input_resume_state: a partition read to its
// end after two messages, snapshotted, and opened again from that snapshot
// once a third arrived yields the third only, then ends.
func TestSource_ResumeState(t *testing.T) {
	c := broker(t, map[string]int32{"in": 1})
	brokers := c.ListenAddrs()
	produce(t, brokers, "in", 0, "a", "b")
	src := Lines(brokers, []string{"in"})
	parts, err := src.Partitions(context.Background())
	if err != nil || len(parts) != 1 || parts[0] != "in/0" {
		t.Fatalf("partitions %v, %v", parts, err)
	}
	p, err := src.Open(context.Background(), "in/0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := drain(t, p); strings.Join(got, "") != "ab" {
		t.Fatalf("first run read %q", got)
	}
	snap := p.Position()
	p.Close()
	produce(t, brokers, "in", 0, "c")
	p, err = src.Open(context.Background(), "in/0", snap)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got := drain(t, p); strings.Join(got, "") != "c" {
		t.Fatalf("resumed partition read %q, want only the third message", got)
	}
}

// Start positions and clear errors: latest skips what is there, a missing
// topic is named, and an offset retention deleted is refused.
func TestSource_StartsAndErrors(t *testing.T) {
	c := broker(t, map[string]int32{"in": 2})
	brokers := c.ListenAddrs()
	produce(t, brokers, "in", 0, "old")
	src := Lines(brokers, []string{"in"})
	src.Start = Latest
	p, err := src.Open(context.Background(), "in/0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := drain(t, p); len(got) != 0 {
		t.Fatalf("latest read %q", got)
	}
	if pos := string(p.Position()); pos != "1" {
		t.Fatalf("latest position %q, want the end offset pinned (1)", pos)
	}
	p.Close()

	missing := Lines(brokers, []string{"nope"})
	missing.Outage = time.Second
	if _, err := missing.Partitions(context.Background()); err == nil || !strings.Contains(err.Error(), `topic "nope" does not exist`) {
		t.Fatalf("missing topic: %v", err)
	}
	produce(t, brokers, "in", 1, "x", "y", "z")
	if err := c.DeleteRecords("in", 1, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Open(context.Background(), "in/1", []byte("1")); err == nil || !strings.Contains(err.Error(), "retention deleted them") {
		t.Fatalf("resume below the log start: %v", err)
	}
}

// sinkRun opens an exactly-once sink partition as a run with recovery
// starting at epoch start would.
func sinkRun(t *testing.T, s *Sink[string], resume []byte, start core.Epoch) core.SinkPartition[string] {
	t.Helper()
	ctx := core.WithRunInfo(context.Background(), core.RunInfo{Recovery: true, FlowUID: "f00d", StartEpoch: start})
	p, err := s.Open(ctx, "out/0", resume)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func values(rs []*kgo.Record) string {
	var out []string
	for _, r := range rs {
		out = append(out, string(r.Value))
	}
	return strings.Join(out, " ")
}

// The exactly-once protocol across crashes: an epoch's records reach the
// topic only once the epoch is durable; a run resumed from a snapshot whose
// records were already published does not publish them again; one resumed
// from a snapshot whose transaction never committed publishes them; a
// transaction a killed producer left open is fenced and never seen.
func TestSink_ExactlyOnceAcrossCrashes(t *testing.T) {
	c := broker(t, map[string]int32{"out": 1})
	brokers := c.ListenAddrs()
	s := LineSink(brokers, "out", true)
	ctx := context.Background()
	p := sinkRun(t, s, nil, 1)
	p.Write(ctx, []string{"a,1", "b,1"})
	snap1, err := p.Commit(ctx, 1) // epoch 1 closes: kept, not published
	if err != nil {
		t.Fatal(err)
	}
	if got := values(readAll(t, brokers, "out", 0)); got != "" {
		t.Fatalf("published before the epoch was durable: %q", got)
	}
	// Crash here. The next run resumes from snap1 (epoch 1 durable): it
	// publishes epoch 1's records.
	p2 := sinkRun(t, s, snap1, 2)
	if got := values(readAll(t, brokers, "out", 0)); got != "a,1 b,1" {
		t.Fatalf("after resuming from the durable epoch: %q", got)
	}
	// Crash again before the next snapshot: the run after it resumes from
	// snap1 again, and must not publish a second time.
	p2.Close(ctx)
	p3 := sinkRun(t, s, snap1, 2)
	if got := values(readAll(t, brokers, "out", 0)); got != "a,1 b,1" {
		t.Fatalf("published twice: %q", got)
	}
	// A normal epoch: written, committed, made durable, published.
	p3.(core.DurableSink).Durable(ctx, 2)
	p3.Write(ctx, []string{"c,1"})
	snap2, _ := p3.Commit(ctx, 2)
	p3.(core.DurableSink).Durable(ctx, 3)
	if got := values(readAll(t, brokers, "out", 0)); got != "a,1 b,1 c,1" {
		t.Fatalf("after a durable epoch: %q", got)
	}
	p3.Close(ctx)
	// A producer killed inside a transaction leaves it open; the next run
	// fences it, and its records are never visible.
	zombie, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID("flowkeep-f00d-out/0"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	if err := zombie.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := zombie.ProduceSync(context.Background(), &kgo.Record{Topic: "out", Partition: 0, Value: []byte("zombie")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	p4 := sinkRun(t, s, snap2, 3)
	defer p4.Close(ctx)
	if got := values(readAll(t, brokers, "out", 0)); got != "a,1 b,1 c,1" {
		t.Fatalf("after fencing a zombie transaction: %q", got)
	}
	for _, r := range readAll(t, brokers, "out", 0) {
		if seq, ok := ParseSeq(r); !ok || seq == 0 {
			t.Fatalf("record %q has no transaction sequence number", r.Value)
		}
	}
}

// Exactly-once output without recovery is refused with what to do.
func TestSink_ExactlyOnceNeedsRecovery(t *testing.T) {
	c := broker(t, map[string]int32{"out": 2})
	s := LineSink(c.ListenAddrs(), "out", true)
	if got, err := s.Partitions(context.Background()); fmt.Sprint(got) != "[out/0 out/1]" {
		t.Fatalf("partitions %v, %v", got, err)
	}
	if _, err := s.Open(context.Background(), "out/0", nil); err == nil || !strings.Contains(err.Error(), "needs recovery") {
		t.Fatalf("err = %v", err)
	}
	missing := LineSink(c.ListenAddrs(), "nope", false)
	missing.Outage = time.Second
	if _, err := missing.Partitions(context.Background()); err == nil || !strings.Contains(err.Error(), `"nope" does not exist`) {
		t.Fatalf("missing topic: %v", err)
	}
}

// At least once: records written are in the topic once the epoch closes.
func TestSink_AtLeastOnce(t *testing.T) {
	c := broker(t, map[string]int32{"out": 2})
	brokers := c.ListenAddrs()
	s := LineSink(brokers, "out", false)
	if _, err := s.Partitions(context.Background()); err != nil { // as the runtime does first
		t.Fatal(err)
	}
	byPart := map[string][]string{}
	for _, line := range []string{"a,1", "b,2", "c,3", "a,4"} {
		p := s.PartitionFor(line)
		byPart[p] = append(byPart[p], line)
	}
	if s.PartitionFor("a,1") != s.PartitionFor("a,9") {
		t.Fatal("one key went to two partitions")
	}
	for part, lines := range byPart {
		p, err := s.Open(context.Background(), part, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Write(context.Background(), lines); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Commit(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		p.Close(context.Background())
	}
	var got []string
	for p := int32(0); p < 2; p++ {
		for _, r := range readAll(t, brokers, "out", p) {
			got = append(got, string(r.Value))
		}
	}
	if len(got) != 4 {
		t.Fatalf("topic holds %v", got)
	}
}

// Tail keeps reading as records arrive; a group, if given, gets the offsets
// of each epoch close (lag monitoring); partitions added to a topic are
// listed by the next run; an unreachable broker fails the read after the
// outage bound, with the partition named.
func TestSource_TailGroupNewPartitionsAndOutage(t *testing.T) {
	c := broker(t, map[string]int32{"in": 1})
	brokers := c.ListenAddrs()
	src := Lines(brokers, []string{"in"})
	src.Tail, src.Group, src.Outage = true, "lag", time.Second
	p, err := src.Open(context.Background(), "in/0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var got []string
	deadline := time.Now().Add(5 * time.Second)
	produce(t, brokers, "in", 0, "x")
	for len(got) < 2 && time.Now().Before(deadline) {
		b, err := p.NextBatch(context.Background(), 50*time.Millisecond)
		if err != nil {
			t.Fatalf("tailing partition: %v", err)
		}
		got = append(got, b...)
		if len(got) == 1 {
			produce(t, brokers, "in", 0, "y")
		}
	}
	if strings.Join(got, "") != "xy" {
		t.Fatalf("tail read %q", got)
	}
	if pos := string(p.Position()); pos != "2" {
		t.Fatalf("position %q", pos)
	}
	cl, _ := kgo.NewClient(kgo.SeedBrokers(brokers...))
	defer cl.Close()
	offs, err := kadm.NewClient(cl).FetchOffsets(context.Background(), "lag")
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := offs.Lookup("in", 0); !ok || o.At != 2 {
		t.Fatalf("group offset %+v, want 2", o)
	}
	if _, err := kadm.NewClient(cl).CreatePartitions(context.Background(), 2, "in"); err != nil {
		t.Fatal(err)
	}
	if parts, err := src.Partitions(context.Background()); err != nil || len(parts) != 3 {
		t.Fatalf("after adding partitions: %v %v", parts, err)
	}
	c.Close() // the broker goes away
	var rerr error
	for gone := time.Now().Add(10 * time.Second); time.Now().Before(gone) && rerr == nil; {
		_, rerr = p.NextBatch(context.Background(), 100*time.Millisecond)
	}
	if rerr == nil || !strings.Contains(rerr.Error(), "kafka in/0") {
		t.Fatalf("broker gone: %v", rerr)
	}
}

// A topic deleted under a running source stops the run after the outage
// bound, naming it.
func TestSource_DeletedTopic(t *testing.T) {
	c := broker(t, map[string]int32{"gone": 1})
	brokers := c.ListenAddrs()
	src := Lines(brokers, []string{"gone"})
	src.Tail, src.Outage = true, time.Second
	p, err := src.Open(context.Background(), "gone/0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := c.DeleteTopic("gone"); err != nil {
		t.Fatal(err)
	}
	var rerr error
	for until := time.Now().Add(10 * time.Second); time.Now().Before(until) && rerr == nil; {
		_, rerr = p.NextBatch(context.Background(), 100*time.Millisecond)
	}
	if rerr == nil || !strings.Contains(rerr.Error(), "gone") {
		t.Fatalf("deleted topic: %v", rerr)
	}
}

// sinkRunIn opens an exactly-once sink partition as a run of lineage
// lineage starting at epoch start would.
func sinkRunIn(t *testing.T, s *Sink[string], resume []byte, lineage string, start core.Epoch) core.SinkPartition[string] {
	t.Helper()
	ctx := core.WithRunInfo(context.Background(), core.RunInfo{Recovery: true, FlowUID: "f00d", Lineage: lineage, StartEpoch: start})
	p, err := s.Open(ctx, "out/0", resume)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A restore to an older epoch starts a new lineage whose transaction
// sequence numbers repeat the old lineage's. Its first durable epoch,
// crashed before it was published, is published once by the restart:
// judged against its own lineage's records, not the old lineage's higher
// sequence numbers (which used to swallow it).
func TestSink_RestoredToAnOlderEpochPublishesItsOwnEpochs(t *testing.T) {
	c := broker(t, map[string]int32{"out": 1})
	brokers := c.ListenAddrs()
	s := LineSink(brokers, "out", true)
	bg := context.Background()
	old := sinkRunIn(t, s, nil, "aaaaaaaa", 1)
	var snaps [][]byte
	for i, v := range []string{"e1", "e2", "e3", "e4"} {
		e := core.Epoch(i + 1)
		old.Write(bg, []string{v})
		snap, err := old.Commit(bg, e)
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
		if err := old.(core.DurableSink).Durable(bg, e+1); err != nil {
			t.Fatal(err)
		}
	}
	old.Close(bg)
	// Restored at the epoch after e2: its snapshot still holds e2 as
	// pending, which the old lineage published (not again). The sink warns
	// that e3 and e4's epochs will be produced again.
	var warned []string
	ctx := core.WithRunInfo(context.Background(), core.RunInfo{Recovery: true, FlowUID: "f00d", Lineage: "bbbbbbbb", StartEpoch: 3})
	ctx = core.WithWarnings(ctx, func(msg string) { warned = append(warned, msg) })
	restored, err := s.Open(ctx, "out/0", snaps[1])
	if err != nil {
		t.Fatal(err)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "transactions 3..4") || !strings.Contains(warned[0], "consumers see it twice") {
		t.Fatalf("warnings: %q", warned)
	}
	restored.Write(bg, []string{"b3"})
	snapB3, err := restored.Commit(bg, 3)
	if err != nil {
		t.Fatal(err)
	}
	restored.Close(bg) // b3's epoch is durable; the run crashes before publishing it
	warned = nil
	again := sinkRunIn(t, s, snapB3, "bbbbbbbb", 4)
	again.Close(bg)
	if got := values(readAll(t, brokers, "out", 0)); got != "e1 e2 e3 e4 b3" {
		t.Fatalf("the restored lineage's durable epoch after a crash: %q, want it published once after the old lineage's", got)
	}
	// And once only: another restart from the same snapshot adds nothing.
	sinkRunIn(t, s, snapB3, "bbbbbbbb", 4).Close(bg)
	if got := values(readAll(t, brokers, "out", 0)); got != "e1 e2 e3 e4 b3" {
		t.Fatalf("published twice: %q", got)
	}
}
