package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowkeep/flowkeep/core"
)

// seqs lists the transaction sequence number of each record.
func seqs(rs []*kgo.Record) string {
	var out []string
	for _, r := range rs {
		seq, _ := ParseSeq(r)
		out = append(out, fmt.Sprint(seq))
	}
	return strings.Join(out, " ")
}

// Durable(below) publishes exactly the kept epochs below `below`, one
// transaction each, oldest first, whatever the order of the calls before
// it: two epochs committed with no Durable between them are published as
// two transactions by the one Durable that covers both.
func TestSink_DurablePublishesExactlyTheEpochsBelow(t *testing.T) {
	c := broker(t, map[string]int32{"out": 1})
	brokers := c.ListenAddrs()
	ctx := context.Background()
	p := sinkRun(t, LineSink(brokers, "out", true), nil, 1)
	defer p.Close(ctx)
	d := p.(core.DurableSink)
	p.Write(ctx, []string{"a,1"})
	p.Commit(ctx, 1)
	p.Write(ctx, []string{"b,1", "b,2"})
	p.Commit(ctx, 3) // epoch 2 wrote nothing
	if got := values(readAll(t, brokers, "out", 0)); got != "" {
		t.Fatalf("published before any epoch was durable: %q", got)
	}
	if err := d.Durable(ctx, 4); err != nil {
		t.Fatal(err)
	}
	rs := readAll(t, brokers, "out", 0)
	if got, s := values(rs), seqs(rs); got != "a,1 b,1 b,2" || s != "1 2 2" {
		t.Fatalf("after epochs 1..3 are durable: %q in transactions %q, want epoch 1 in transaction 1, epoch 3 in 2", got, s)
	}
	// Nothing kept: an idle epoch's Durable publishes nothing.
	if err := d.Durable(ctx, 5); err != nil {
		t.Fatal(err)
	}
	p.Write(ctx, []string{"c,1"})
	if _, err := p.Commit(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := d.Durable(ctx, 6); err != nil {
		t.Fatal(err)
	}
	rs = readAll(t, brokers, "out", 0)
	if got, s := values(rs), seqs(rs); got != "a,1 b,1 b,2 c,1" || s != "1 2 2 3" {
		t.Fatalf("after epoch 5: %q in transactions %q", got, s)
	}
}

// What the exactly-once protocol cannot reconcile fails loudly, publishing
// nothing: a Durable that comes after the commit of an epoch it does not
// cover, a durable frontier that goes back, a commit that goes back or of
// an epoch already durable, and a stored position holding an epoch that
// is not below the resume epoch.
func TestSink_ExactlyOnceRefusesWhatItCannotReconcile(t *testing.T) {
	c := broker(t, map[string]int32{"out": 1})
	brokers := c.ListenAddrs()
	ctx := context.Background()
	s := LineSink(brokers, "out", true)
	expect := func(err error, says ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("no error, want one saying %q", says)
		}
		for _, w := range says {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("error %q does not say %q", err, w)
			}
		}
	}

	p := sinkRun(t, s, nil, 1)
	d := p.(core.DurableSink)
	p.Write(ctx, []string{"a,1"})
	p.Commit(ctx, 1)
	p.Write(ctx, []string{"b,1"})
	snap2, _ := p.Commit(ctx, 2)
	// Epoch 2 is kept but Durable(2) says only epochs below 2 are durable:
	// the runtime committed 2 before saying so.
	expect(d.Durable(ctx, 2), "below 2", "epoch 2 was committed already")
	if got := values(readAll(t, brokers, "out", 0)); got != "" {
		t.Fatalf("a refused Durable published %q", got)
	}
	if err := d.Durable(ctx, 3); err != nil {
		t.Fatal(err)
	}
	expect(d.Durable(ctx, 2), "below 2", "below 3", "must not go back")
	_, err := p.Commit(ctx, 2)
	expect(err, "commit of epoch 2 after epoch 2")
	p.Close(ctx)

	// Resumed at epoch 5: epoch 4 is durable, so a commit of it is wrong.
	q := sinkRun(t, s, snap2, 5)
	_, err = q.Commit(ctx, 4)
	expect(err, "epoch 4 after epoch 4")
	q.Close(ctx)

	// A stored position whose kept epoch 2 is at or after the resume epoch.
	ri := core.RunInfo{Recovery: true, FlowUID: "f00d", StartEpoch: 2}
	_, err = s.Open(core.WithRunInfo(ctx, ri), "out/0", snap2)
	expect(err, "keeps epoch 2's records", "resumes at epoch 2")
	if got := values(readAll(t, brokers, "out", 0)); got != "a,1 b,1" {
		t.Fatalf("topic holds %q", got)
	}
}

// appendRecord appends an old snapshot's record (key and value, each with
// its uvarint length).
func appendRecord(b []byte, k, v string) []byte {
	b = binary.AppendUvarint(b, uint64(len(k)))
	b = append(b, k...)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// Positions written by earlier versions still read: the first format
// (published and kept sequence numbers, then the kept records) and the
// lineage format (magic 00 fe, lineage, first offset, then the same). Their
// kept records are one epoch of unknown number, below the resume epoch; a
// resumed run publishes them under their sequence number and numbers the
// next transactions after it.
func TestSink_ReadsPositionsOfEarlierVersions(t *testing.T) {
	v1 := []byte{0x03, 0x04, 0x02}
	v1 = appendRecord(v1, "a", "a,1")
	v1 = appendRecord(v1, "b", "b,1")
	v2 := []byte{0x00, 0xfe, 0x08}
	v2 = append(v2, "aaaaaaaa"...)
	v2 = append(v2, 0x05, 0x03, 0x04, 0x01)
	v2 = appendRecord(v2, "c", "c,1")
	v2idle := append([]byte{0x00, 0xfe, 0x08}, "aaaaaaaa\x05\x03\x04\x00"...) // published 3, nothing kept
	for _, tt := range []struct {
		name    string
		b       []byte
		lineage string
		floor   int64
		kept    string
	}{
		{"before lineages", v1, "f00d", 0, "a,1 b,1"},
		{"with lineage", v2, "aaaaaaaa", 5, "c,1"},
		{"with lineage, nothing kept", v2idle, "aaaaaaaa", 5, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &exactlyOncePart[string]{partBase: partBase[string]{topic: "out"}, root: "f00d", lineage: "f00d"}
			if err := p.decode(tt.b); err != nil {
				t.Fatal(err)
			}
			if p.lineage != tt.lineage || p.floor != tt.floor || p.committed != 3 {
				t.Fatalf("lineage %q floor %d published %d", p.lineage, p.floor, p.committed)
			}
			var kept []*kgo.Record
			for _, k := range p.pending {
				if k.epoch != 0 || k.seq != 4 {
					t.Fatalf("kept epoch %d transaction %d, want epoch 0 (unknown) and transaction 4", k.epoch, k.seq)
				}
				kept = append(kept, k.records...)
			}
			if got := values(kept); got != tt.kept || len(p.pending) > 1 {
				t.Fatalf("kept %q in %d epochs, want %q in one", got, len(p.pending), tt.kept)
			}
			// The current format round-trips.
			again := &exactlyOncePart[string]{partBase: partBase[string]{topic: "out"}}
			enc := p.encode()
			if !bytes.HasPrefix(enc, epochMagic) {
				t.Fatalf("encoded as % x", enc)
			}
			if err := again.decode(enc); err != nil || !bytes.Equal(again.encode(), enc) {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
	for _, bad := range [][]byte{v1[:len(v1)-1], append(v2[:len(v2):len(v2)], 0), {0x00, 0xfd, 0x08}, {0x00, 0xfd, 0x01, 'x', 0x00, 0x00, 0x01, 0x07, 0x05, 0x00}} {
		p := &exactlyOncePart[string]{partBase: partBase[string]{topic: "out"}, root: "f00d", lineage: "f00d"}
		if err := p.decode(bad); err == nil {
			t.Errorf("decoded % x", bad)
		}
	}

	// A run resumed from the lineage format's position publishes its kept
	// epoch as transaction 4, and its next epoch as transaction 5.
	c := broker(t, map[string]int32{"out": 1})
	brokers := c.ListenAddrs()
	ctx := context.Background()
	p := sinkRunIn(t, LineSink(brokers, "out", true), v2, "aaaaaaaa", 7)
	defer p.Close(ctx)
	p.(core.DurableSink).Durable(ctx, 7)
	p.Write(ctx, []string{"d,1"})
	p.Commit(ctx, 7)
	if err := p.(core.DurableSink).Durable(ctx, 8); err != nil {
		t.Fatal(err)
	}
	rs := readAll(t, brokers, "out", 0)
	if got, s := values(rs), seqs(rs); got != "c,1 d,1" || s != "4 5" {
		t.Fatalf("topic holds %q in transactions %q, want c,1 d,1 in 4 and 5", got, s)
	}
}

// Partitions asks the brokers again after a failure (a topic created
// later is found), each time retrying for no longer than the outage bound,
// and its error says why and what to do.
func TestSink_PartitionsRetriedNotCached(t *testing.T) {
	c := broker(t, nil)
	s := LineSink(c.ListenAddrs(), "late", false)
	// Long enough for the brokers to answer at least once on a loaded
	// machine (the race run beside a build): at 500ms the first metadata
	// request could take it all, and the error said "deadline exceeded"
	// instead of why.
	s.Outage = 2 * time.Second
	ctx := context.Background()
	began := time.Now()
	parts, err := s.Partitions(ctx)
	if took := time.Since(began); took < s.Outage || took > s.Outage+3*time.Second {
		t.Fatalf("listing a missing topic gave up after %v, want about the outage bound (%v)", took, s.Outage)
	}
	if err == nil || !strings.Contains(err.Error(), `topic "late" does not exist`) || !strings.Contains(err.Error(), "create the topic") {
		t.Fatalf("listing a missing topic: %v, %v", parts, err)
	}
	// The topic appears while a listing retries: that listing finds it.
	s.Outage = 10 * time.Second
	go func() {
		time.Sleep(300 * time.Millisecond)
		c.CreateTopic("late", 2, nil)
	}()
	began = time.Now()
	if parts, err := s.Partitions(ctx); fmt.Sprint(parts) != "[late/0 late/1]" {
		t.Fatalf("partitions after the topic was created: %v, %v", parts, err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("a topic created 300ms into the listing was found after %v: the retries asked a cache, not the brokers", took)
	}
	p, err := s.Open(context.Background(), "late/1", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Close(context.Background())
}

// At least once, a written record is in the topic within milliseconds,
// before the epoch commits (no linger, no wait for Commit).
func TestSink_AtLeastOnceVisibleBeforeCommit(t *testing.T) {
	c := broker(t, map[string]int32{"out": 1})
	brokers := c.ListenAddrs()
	ctx := context.Background()
	p, err := LineSink(brokers, "out", false).Open(ctx, "out/0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{"out": {0: kgo.NewOffset().AtStart()}}),
		kgo.FetchMaxWait(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var worst time.Duration
	for i := range 20 {
		line := fmt.Sprintf("k,%d", i)
		wrote := time.Now()
		if err := p.Write(ctx, []string{line}); err != nil {
			t.Fatal(err)
		}
		if err := p.(core.Flusher).Flush(ctx); err != nil {
			t.Fatal(err)
		}
		seen := false
		for !seen && time.Since(wrote) < 5*time.Second {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			cl.PollFetches(pctx).EachRecord(func(r *kgo.Record) { seen = seen || string(r.Value) == line })
			cancel()
		}
		if !seen {
			t.Fatalf("record %q not in the topic 5s after it was written", line)
		}
		worst = max(worst, time.Since(wrote))
	}
	if worst > time.Second {
		t.Fatalf("a written record took %v to reach the topic", worst)
	}
	t.Logf("slowest of 20 records in the topic %v after Write, with no Commit", worst.Round(100*time.Microsecond))
}

// The run's context bounds what the sink waits for: with the broker gone,
// an at-least-once Commit and an exactly-once Durable return when the
// context ends, not after the outage bound (a minute).
func TestSink_ContextEndsTheWait(t *testing.T) {
	c := broker(t, map[string]int32{"out": 1})
	brokers := c.ListenAddrs()
	bg := context.Background()
	alo, err := LineSink(brokers, "out", false).Open(bg, "out/0", nil)
	if err != nil {
		t.Fatal(err)
	}
	eo := sinkRun(t, LineSink(brokers, "out", true), nil, 1)
	eo.Write(bg, []string{"b,1"})
	eo.Commit(bg, 1)
	c.Close()
	alo.Write(bg, []string{"a,1"})
	for name, wait := range map[string]func(context.Context) error{
		"at-least-once commit": func(ctx context.Context) error { _, err := alo.Commit(ctx, 1); return err },
		"exactly-once durable": func(ctx context.Context) error { return eo.(core.DurableSink).Durable(ctx, 2) },
	} {
		ctx, cancel := context.WithTimeout(bg, 300*time.Millisecond)
		began := time.Now()
		err := wait(ctx)
		cancel()
		if err == nil || time.Since(began) > 5*time.Second {
			t.Fatalf("%s with the broker gone: %v after %v, want an error once the context ends", name, err, time.Since(began))
		}
		if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "context") {
			t.Logf("%s: %v", name, err)
		}
	}
	ended, cancel := context.WithCancel(bg)
	cancel()
	began := time.Now()
	alo.Close(ended)
	eo.Close(ended)
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("Close with an ended context took %v", took)
	}
}
