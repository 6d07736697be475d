// Package kafka holds flowkeep's Kafka connectors, built on franz-go and on
// core's public Source and Sink contracts only.
//
// Source reads topic partitions (each is a source partition, named
// "topic/N", spread over workers like files). The next offset to read is
// the partition's snapshot, so a resumed or rescaled run continues exactly
// after the last durable epoch, whatever consumer groups say.
//
// Sink writes to a topic: at least once by default, or exactly once with
// transactions published only when their epoch is durable (see Sink).
package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowkeep/flowkeep/core"
)

// Start is where a partition is read from on a fresh start (a resumed run
// always continues from its snapshot).
type Start struct {
	kind int // 0 earliest, 1 latest, 2 at time
	at   time.Time
}

var (
	// Earliest starts at the oldest record still kept.
	Earliest = Start{}
	// Latest starts after the records present when the partition opens.
	Latest = Start{kind: 1}
)

// At starts at the first record at or after t.
func At(t time.Time) Start { return Start{kind: 2, at: t} }

// DefaultOutage is how long a source or sink keeps retrying an unreachable
// broker or a missing topic before it fails the run.
const DefaultOutage = time.Minute

// Source reads Topics from Brokers. Its values are decoded by Decode.
type Source[T any] struct {
	Brokers []string
	Topics  []string
	// Start is where a fresh start begins (Earliest by default).
	Start Start
	// Tail keeps reading as records arrive. Without it each partition ends
	// at the end offset it had when it was opened (batch runs and tests).
	Tail bool
	// Group, if set, is a consumer group the offsets reached at each epoch
	// close are committed to, for lag monitoring only: a resume never
	// reads them.
	Group string
	// Outage bounds retries of an unreachable broker or missing topic
	// (DefaultOutage).
	Outage time.Duration
	// Decode turns a record into an item.
	Decode func(*kgo.Record) (T, error)
	// Opts are extra franz-go client options (TLS, SASL ...).
	Opts []kgo.Opt
}

// Lines is a Source of each record's value as a string.
func Lines(brokers, topics []string) Source[string] {
	return Source[string]{Brokers: brokers, Topics: topics, Decode: func(r *kgo.Record) (string, error) { return string(r.Value), nil }}
}

func (s Source[T]) outage() time.Duration { return outageOr(s.Outage) }

func (s Source[T]) client(extra ...kgo.Opt) (*kgo.Client, error) {
	return newClient(s.Brokers, s.Outage, s.Opts, extra...)
}

// Partitions implements core.Source: every partition of every topic, as
// "topic/N". Partitions added to a topic are read by the next run, from
// Start.
func (s Source[T]) Partitions(ctx context.Context) ([]string, error) {
	return topicPartitions(ctx, s.Brokers, s.Outage, s.Opts, s.Topics...)
}

func outageOr(d time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return DefaultOutage
}

// newClient is a franz-go client for brokers whose requests retry for up
// to the outage bound.
func newClient(brokers []string, outage time.Duration, opts []kgo.Opt, extra ...kgo.Opt) (*kgo.Client, error) {
	if len(brokers) == 0 {
		return nil, errors.New("kafka: no brokers given")
	}
	all := append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.RetryTimeout(outageOr(outage))}, opts...)
	return kgo.NewClient(append(all, extra...)...)
}

// topicPartitions lists every partition of topics as "topic/N", ordered by
// topic and partition number, retrying (an unreachable broker, a topic not
// there yet) for up to the outage bound.
func topicPartitions(ctx context.Context, brokers []string, outage time.Duration, opts []kgo.Opt, topics ...string) ([]string, error) {
	// Each try asks the brokers: metadata cached for the default 5s would
	// hide a topic created meanwhile.
	cl, err := newClient(brokers, outage, opts, kgo.MetadataMinAge(retryEvery))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, outageOr(outage))
	defer cancel()
	for {
		var out []string
		tds, err := kadm.NewClient(cl).ListTopics(ctx, topics...)
		for _, t := range topics {
			if err != nil {
				break
			}
			td, ok := tds[t]
			switch {
			case !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition) || (td.Err == nil && len(td.Partitions) == 0):
				err = fmt.Errorf("topic %q does not exist", t)
			case td.Err != nil:
				err = fmt.Errorf("topic %q: %w", t, td.Err)
			default:
				ps := slices.Sorted(maps.Keys(td.Partitions))
				for _, p := range ps {
					out = append(out, partName(t, p))
				}
			}
		}
		if err == nil {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("kafka %s: %w (gave up after %v)", strings.Join(brokers, ","), err, outageOr(outage))
		case <-time.After(retryEvery):
		}
	}
}

// retryEvery is how often listing a topic's partitions is tried again.
const retryEvery = 250 * time.Millisecond

func partName(topic string, p int32) string { return topic + "/" + strconv.Itoa(int(p)) }

func parsePart(name string) (string, int32, error) {
	i := strings.LastIndexByte(name, '/')
	if i <= 0 {
		return "", 0, fmt.Errorf("kafka partition name %q is not topic/N", name)
	}
	p, err := strconv.ParseInt(name[i+1:], 10, 32)
	if err != nil || p < 0 {
		return "", 0, fmt.Errorf("kafka partition name %q is not topic/N", name)
	}
	return name[:i], int32(p), nil
}

// Open implements core.Source. resume is the next offset to read.
func (s Source[T]) Open(ctx context.Context, part string, resume []byte) (core.SourcePartition[T], error) {
	if s.Decode == nil {
		return nil, errors.New("kafka source: Decode is not set")
	}
	topic, p, err := parsePart(part)
	if err != nil {
		return nil, err
	}
	admin, err := s.client()
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	adm := kadm.NewClient(admin)
	octx, cancel := context.WithTimeout(ctx, s.outage())
	defer cancel()
	offsetOf := func(list func() (kadm.ListedOffsets, error)) (int64, error) {
		lo, err := list()
		if err != nil {
			return 0, err
		}
		o, ok := lo.Lookup(topic, p)
		if !ok {
			return 0, fmt.Errorf("partition %s is not listed", part)
		}
		return o.Offset, o.Err
	}
	var next int64
	switch {
	case resume != nil:
		if next, err = strconv.ParseInt(string(resume), 10, 64); err != nil || next < 0 {
			return nil, fmt.Errorf("stored offset %q of %s is not an offset", resume, part)
		}
		first, err := offsetOf(func() (kadm.ListedOffsets, error) { return adm.ListStartOffsets(octx, topic) })
		if err != nil {
			return nil, fmt.Errorf("kafka %s: %w", part, err)
		}
		if next < first {
			return nil, fmt.Errorf("kafka %s: the run resumes at offset %d, but the topic only keeps records from %d (retention deleted them): records in between are lost to this flow; raise the topic's retention, or start a new flow", part, next, first)
		}
	case s.Start.kind == 1:
		next, err = offsetOf(func() (kadm.ListedOffsets, error) { return adm.ListEndOffsets(octx, topic) })
	case s.Start.kind == 2:
		next, err = offsetOf(func() (kadm.ListedOffsets, error) {
			return adm.ListOffsetsAfterMilli(octx, s.Start.at.UnixMilli(), topic)
		})
	default:
		next, err = offsetOf(func() (kadm.ListedOffsets, error) { return adm.ListStartOffsets(octx, topic) })
	}
	if err != nil {
		return nil, fmt.Errorf("kafka %s: start offset: %w", part, err)
	}
	end := int64(-1)
	if !s.Tail {
		// The last stable offset: records of transactions still open are
		// left to the next run.
		if end, err = offsetOf(func() (kadm.ListedOffsets, error) { return adm.ListCommittedOffsets(octx, topic) }); err != nil {
			return nil, fmt.Errorf("kafka %s: end offset: %w", part, err)
		}
	}
	// Transaction markers are kept so that every offset up to the end is
	// seen: the end of a partition written in transactions is a marker.
	cl, err := s.client(kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {p: kgo.NewOffset().At(next)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		return nil, err
	}
	sp := &sourcePart[T]{src: s, cl: cl, topic: topic, part: p, name: part, next: next, end: end, checked: time.Now()}
	if s.Group != "" {
		if sp.group, err = s.client(); err != nil {
			cl.Close()
			return nil, err
		}
	}
	return sp, nil
}

type sourcePart[T any] struct {
	src      Source[T]
	cl       *kgo.Client
	group    *kgo.Client
	topic    string
	part     int32
	name     string
	next     int64 // offset of the next record to return
	end      int64 // stop here (-1: tail)
	batch    []T
	failing  time.Time // first of a run of failed fetches or checks
	lastErr  error
	reported int64     // offset last committed to the group
	checked  time.Time // last time the broker answered (records or a check)
}

// check asks, now and then while nothing arrives, whether the broker still
// answers and the topic still exists (the client retries a lost broker
// silently): a failure that lasts longer than the outage bound ends the
// run with it.
func (p *sourcePart[T]) check(ctx context.Context) error {
	every := p.src.outage() / 4
	if time.Since(p.checked) < every {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, every)
	tds, err := kadm.NewClient(p.cl).ListTopics(cctx, p.topic)
	cancel()
	if err == nil {
		if td, ok := tds[p.topic]; !ok || td.Err != nil {
			err = fmt.Errorf("topic %q no longer exists", p.topic)
		}
	}
	if err == nil {
		p.failing, p.checked = time.Time{}, time.Now()
		return nil
	}
	if p.failing.IsZero() {
		p.failing = time.Now()
	}
	if time.Since(p.failing) > p.src.outage() {
		return fmt.Errorf("kafka %s: %w (failing for %v)", p.name, err, time.Since(p.failing).Round(time.Second))
	}
	return nil
}

func (p *sourcePart[T]) NextBatch(ctx context.Context, wait time.Duration) ([]T, error) {
	p.batch = p.batch[:0]
	if p.end >= 0 && p.next >= p.end {
		return nil, io.EOF
	}
	pctx, cancel := context.WithTimeout(ctx, max(wait, time.Millisecond))
	fs := p.cl.PollFetches(pctx)
	cancel()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var ferr error
	fs.EachError(func(_ string, _ int32, err error) {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && ferr == nil {
			ferr = err
		}
	})
	if ferr != nil {
		if p.failing.IsZero() {
			p.failing = time.Now()
		}
		p.lastErr = ferr
		if time.Since(p.failing) > p.src.outage() {
			return nil, fmt.Errorf("kafka %s: %w (failing for %v)", p.name, ferr, time.Since(p.failing).Round(time.Second))
		}
		return p.batch, nil
	}
	var derr error
	fs.EachRecord(func(r *kgo.Record) {
		if derr != nil || r.Offset < p.next || (p.end >= 0 && r.Offset >= p.end) {
			return
		}
		if r.Attrs.IsControl() {
			// A transaction marker takes an offset but holds no record.
			p.next = r.Offset + 1
			return
		}
		it, err := p.src.Decode(r)
		if err != nil {
			derr = fmt.Errorf("kafka %s offset %d: %w", p.name, r.Offset, err)
			return
		}
		p.batch = append(p.batch, it)
		p.next = r.Offset + 1
	})
	if derr != nil {
		return nil, derr
	}
	if len(p.batch) > 0 || fs.NumRecords() > 0 {
		p.failing, p.checked = time.Time{}, time.Now()
	} else if err := p.check(ctx); err != nil {
		return nil, err
	}
	if p.end >= 0 && p.next >= p.end {
		return p.batch, io.EOF
	}
	return p.batch, nil
}

// Position is the offset of the next record to read. With a Group, the
// position reached at the previous epoch close is committed to it.
func (p *sourcePart[T]) Position() []byte {
	if p.group != nil && p.reported != p.next {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		offs := kadm.Offsets{}
		offs.Add(kadm.Offset{Topic: p.topic, Partition: p.part, At: p.next, LeaderEpoch: -1})
		if _, err := kadm.NewClient(p.group).CommitOffsets(ctx, p.src.Group, offs); err == nil {
			p.reported = p.next
		}
		cancel()
	}
	return strconv.AppendInt(nil, p.next, 10)
}

func (p *sourcePart[T]) Close() error {
	p.cl.Close()
	if p.group != nil {
		p.group.Close()
	}
	return nil
}
