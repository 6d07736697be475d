package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowkeep/flowkeep/core"
)

// Sink writes items to Topic, one sink partition per topic partition
// ("topic/N", each written by one worker; an item goes to the partition of
// its key's hash, so one key's items keep their order).
//
// At least once (the default): records are produced as they come and each
// epoch close waits for them to be acknowledged. After a crash, the output
// of the epochs after the last durable one is produced again.
//
// Exactly once (ExactlyOnce, needs recovery): an epoch's records are kept
// in the epoch's snapshot, and produced in one Kafka transaction only when
// that snapshot is durable (the runtime says so through core.DurableSink).
// Each record carries the transaction's sequence number and the flow's
// lineage (its history, see core.RunInfo) in headers. A crash before the
// transaction commits leaves it to the next run, which finds the pending
// records in its snapshot and produces them unless the partition's last
// committed record of the same lineage already carries their sequence
// number (the crash came after the commit). A restore to an older epoch
// starts a new lineage whose sequence numbers repeat the old one's: its
// transactions are judged only against its own records (those after the
// offset where it began), and the output of the epochs after the restored
// one is produced again (the sink warns). Epochs that were never durable were
// never produced, and their input is read again, so nothing is lost or
// repeated. Consumers must read with isolation level read_committed, and the
// topic must be written by this flow only. The transactional id is derived
// from the flow's uid and the partition, so a rescaled or restored run
// fences any transaction a dead worker left open. Output reaches the topic
// one epoch (-s) after it is computed.
type Sink[T any] struct {
	Brokers []string
	Topic   string
	// Encode gives an item's key and value.
	Encode      func(T) (key, value []byte, err error)
	ExactlyOnce bool
	// Outage bounds retries of an unreachable broker (DefaultOutage).
	Outage time.Duration
	Opts   []kgo.Opt

	once  sync.Once
	parts []string
	err   error
}

// LineSink writes strings as record values, keyed by what comes before the
// first comma ("word,count" is keyed by the word), or by the whole line.
func LineSink(brokers []string, topic string, exactlyOnce bool) *Sink[string] {
	return &Sink[string]{Brokers: brokers, Topic: topic, ExactlyOnce: exactlyOnce, Encode: func(s string) ([]byte, []byte, error) {
		key := s
		for i := 0; i < len(s); i++ {
			if s[i] == ',' {
				key = s[:i]
				break
			}
		}
		return []byte(key), []byte(s), nil
	}}
}

// seqHeader carries an exactly-once sink's transaction sequence number;
// lineageHeader the lineage that produced it (absent before lineages: the
// flow's root lineage, whose id is the flow uid).
const (
	seqHeader     = "flowkeep-seq"
	lineageHeader = "flowkeep-lineage"
)

func (s *Sink[T]) outage() time.Duration { return outageOr(s.Outage) }

func (s *Sink[T]) client(extra ...kgo.Opt) (*kgo.Client, error) {
	return newClient(s.Brokers, s.Outage, s.Opts, extra...)
}

// Partitions implements core.Sink. The topic must exist: a failure to list
// its partitions is reported by Open.
func (s *Sink[T]) Partitions() []string {
	s.once.Do(func() {
		s.parts, s.err = topicPartitions(context.Background(), s.Brokers, s.Outage, s.Opts, s.Topic)
		if s.err != nil {
			s.err = fmt.Errorf("output: %w (create it first)", s.err)
		}
	})
	if s.err != nil {
		return []string{s.Topic + "/?"}
	}
	return s.parts
}

// PartitionFor implements core.Sink: the topic partition of the item's key.
func (s *Sink[T]) PartitionFor(item T) string {
	parts := s.Partitions()
	key, _, err := s.Encode(item)
	if err != nil || len(parts) == 1 {
		return parts[0]
	}
	h := fnv.New32a()
	h.Write(key)
	return parts[int(h.Sum32()%uint32(len(parts)))]
}

// Open implements core.Sink.
func (s *Sink[T]) Open(ctx context.Context, part string, resume []byte) (core.SinkPartition[T], error) {
	if s.Partitions(); s.err != nil {
		return nil, s.err
	}
	if s.Encode == nil {
		return nil, errors.New("kafka sink: Encode is not set")
	}
	topic, p, err := parsePart(part)
	if err != nil {
		return nil, err
	}
	sp := &sinkPart[T]{sink: s, topic: topic, part: p, name: part}
	if !s.ExactlyOnce {
		if sp.cl, err = s.client(kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(topic)); err != nil {
			return nil, err
		}
		return sp, nil
	}
	ri := core.RunInfoFrom(ctx)
	if !ri.Recovery || ri.FlowUID == "" {
		return nil, errors.New("kafka sink: exactly-once output needs recovery (run with -r DIR): without snapshots a crash cannot be resumed without repeating output")
	}
	txnID := "flowkeep-" + ri.FlowUID + "-" + part
	if sp.cl, err = s.client(kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID(txnID), kgo.TransactionTimeout(time.Minute)); err != nil {
		return nil, err
	}
	// Initializing the producer fences any transaction a dead owner of this
	// partition left open (it is aborted).
	octx, cancel := context.WithTimeout(ctx, s.outage())
	_, _, err = sp.cl.ProducerID(octx)
	cancel()
	if err != nil {
		sp.cl.Close()
		return nil, fmt.Errorf("kafka sink %s: initialize the transactional producer %s: %w", part, txnID, err)
	}
	sp.root, sp.lineage = ri.FlowUID, ri.FlowUID
	if err := sp.decode(resume); err != nil {
		sp.cl.Close()
		return nil, fmt.Errorf("kafka sink %s: stored position: %w", part, err)
	}
	// Records the last run kept for a transaction it may not have
	// committed: produce them unless the partition already has them (of
	// the lineage that made them).
	if len(sp.pending) > 0 {
		last, err := sp.lastCommittedSeq(ctx)
		if err != nil {
			sp.cl.Close()
			return nil, err
		}
		if last < sp.pendingSeq {
			if err := sp.publish(ctx); err != nil {
				sp.cl.Close()
				return nil, err
			}
		}
		sp.committed, sp.pending = sp.pendingSeq, nil
	}
	if ri.Lineage != "" && ri.Lineage != sp.lineage {
		// A new history (a restore, or files moved): its transactions
		// are its own from the partition's current end on.
		end, err := sp.endOffset(ctx)
		if err == nil && resume != nil {
			// Did the old history publish beyond where this one resumes
			// (a restore to an older epoch)? That output comes again.
			var last uint64
			if last, err = sp.lastCommittedSeq(ctx); err == nil && last > sp.committed {
				core.Warnf(ctx, "kafka sink %s: this run starts a new history (lineage %.12s) at epoch %d, but lineage %.12s already published transactions %d..%d, the output of later epochs, to this partition: this run produces the output of those epochs again, so consumers see it twice",
					part, ri.Lineage, ri.StartEpoch, sp.lineage, sp.committed+1, last)
			}
		}
		if err != nil {
			sp.cl.Close()
			return nil, err
		}
		sp.lineage, sp.floor = ri.Lineage, end
	}
	return sp, nil
}

type sinkPart[T any] struct {
	sink  *Sink[T]
	cl    *kgo.Client
	topic string
	part  int32
	name  string

	// at least once
	inflight sync.WaitGroup
	mu       sync.Mutex
	perr     error

	// exactly once
	epoch      []*kgo.Record // written during the open epoch
	pending    []*kgo.Record // of the last closed epoch, waiting for it to be durable
	pendingSeq uint64        // their transaction's sequence number
	committed  uint64        // the last sequence number published
	// lineage made the sequence numbers above; its records are at or
	// after offset floor (root is the flow's root lineage: records
	// without a lineage header are its).
	lineage, root string
	floor         int64
}

func (p *sinkPart[T]) record(it T) (*kgo.Record, error) {
	k, v, err := p.sink.Encode(it)
	if err != nil {
		return nil, fmt.Errorf("kafka sink %s: encode: %w", p.name, err)
	}
	return &kgo.Record{Topic: p.topic, Partition: p.part, Key: k, Value: v}, nil
}

func (p *sinkPart[T]) Write(ctx context.Context, items []T) error {
	for _, it := range items {
		r, err := p.record(it)
		if err != nil {
			return err
		}
		if p.sink.ExactlyOnce {
			p.epoch = append(p.epoch, r)
			continue
		}
		p.inflight.Add(1)
		p.cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				p.mu.Lock()
				if p.perr == nil {
					p.perr = err
				}
				p.mu.Unlock()
			}
			p.inflight.Done()
		})
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.perr
}

// Durable implements core.DurableSink: the epoch whose records are pending
// is durable, so they are published.
func (p *sinkPart[T]) Durable(ctx context.Context, _ core.Epoch) error {
	if !p.sink.ExactlyOnce || len(p.pending) == 0 {
		return nil
	}
	if err := p.publish(ctx); err != nil {
		return err
	}
	p.committed, p.pending = p.pendingSeq, nil
	return nil
}

// publish produces the pending records in one transaction and commits it.
func (p *sinkPart[T]) publish(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.sink.outage())
	defer cancel()
	if err := p.cl.BeginTransaction(); err != nil {
		return fmt.Errorf("kafka sink %s: begin transaction: %w", p.name, err)
	}
	seq := binary.BigEndian.AppendUint64(nil, p.pendingSeq)
	for _, r := range p.pending {
		r.Headers = append(r.Headers[:0], kgo.RecordHeader{Key: seqHeader, Value: seq}, kgo.RecordHeader{Key: lineageHeader, Value: []byte(p.lineage)})
	}
	if err := p.cl.ProduceSync(ctx, p.pending...).FirstErr(); err != nil {
		p.cl.EndTransaction(ctx, kgo.TryAbort)
		return fmt.Errorf("kafka sink %s: produce: %w", p.name, err)
	}
	if err := p.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return fmt.Errorf("kafka sink %s: commit transaction %d: %w", p.name, p.pendingSeq, err)
	}
	return nil
}

// endOffset is the partition's last stable offset: Open fenced any
// transaction left open, so every record before it is decided.
func (p *sinkPart[T]) endOffset(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, p.sink.outage())
	defer cancel()
	admin, err := p.sink.client()
	if err != nil {
		return 0, err
	}
	defer admin.Close()
	ends, err := kadm.NewClient(admin).ListCommittedOffsets(ctx, p.topic)
	if err != nil {
		return 0, fmt.Errorf("kafka sink %s: end offset: %w", p.name, err)
	}
	o, ok := ends.Lookup(p.topic, p.part)
	if !ok || o.Err != nil {
		return 0, fmt.Errorf("kafka sink %s: end offset: %v", p.name, o.Err)
	}
	return o.Offset, nil
}

// lastCommittedSeq reads the sequence number of the partition's last
// committed record of the sink's lineage (0 if it has none).
func (p *sinkPart[T]) lastCommittedSeq(ctx context.Context) (uint64, error) {
	end, err := p.endOffset(ctx)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.sink.outage())
	defer cancel()
	if end <= p.floor {
		return 0, nil
	}
	// The tail may be an aborted transaction (hidden by read_committed),
	// or another lineage's: read further back until a committed record of
	// this lineage shows up, or the lineage's first offset.
	for window := int64(64); ; window *= 4 {
		from := max(p.floor, end-window)
		last, found, err := p.scanSeq(ctx, from, end)
		if err != nil || found || from == p.floor {
			return last, err
		}
	}
}

// scanSeq reads [from, end) and returns the sequence number of the last
// committed record there that carries one.
func (p *sinkPart[T]) scanSeq(ctx context.Context, from, end int64) (uint64, bool, error) {
	cl, err := p.sink.client(kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{p.topic: {p.part: kgo.NewOffset().At(from)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		return 0, false, err
	}
	defer cl.Close()
	var last uint64
	found := false
	next := from
	for next < end {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return 0, false, fmt.Errorf("kafka sink %s: read the last committed records: %w", p.name, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			next = max(next, r.Offset+1)
			if r.Attrs.IsControl() || r.Offset >= end {
				return
			}
			if seq, ok := ParseSeq(r); ok && lineageOf(r, p.root) == p.lineage {
				last, found = seq, true
			}
		})
	}
	return last, found, nil
}

func (p *sinkPart[T]) Commit(ctx context.Context, _ core.Epoch) ([]byte, error) {
	if !p.sink.ExactlyOnce {
		if err := p.cl.Flush(ctx); err != nil {
			return nil, err
		}
		p.inflight.Wait()
		p.mu.Lock()
		defer p.mu.Unlock()
		return nil, p.perr
	}
	if len(p.pending) > 0 {
		// Durable was not called for the epoch before (no recovery pacing
		// reached it): keep both for one transaction.
		p.epoch = append(p.pending, p.epoch...)
		p.pending = nil
	}
	if len(p.epoch) > 0 {
		p.pending, p.epoch = p.epoch, nil
		p.pendingSeq = p.committed + 1
	}
	return p.encode(), nil
}

// snapMagic starts a snapshot that names its lineage. A snapshot of
// before lineages starts with the uvarint of the last published sequence
// number; were it 0, the next uvarint (the pending one) is at most 1, so
// its first byte is never 0xfe.
var snapMagic = []byte{0x00, 0xfe}

// encode is the snapshot: the magic, the lineage and its first offset, the
// last published sequence number, then the pending records (sequence
// number, count, key and value of each).
func (p *sinkPart[T]) encode() []byte {
	b := append([]byte(nil), snapMagic...)
	b = binary.AppendUvarint(b, uint64(len(p.lineage)))
	b = append(b, p.lineage...)
	b = binary.AppendUvarint(b, uint64(p.floor))
	b = binary.AppendUvarint(b, p.committed)
	b = binary.AppendUvarint(b, p.pendingSeq)
	b = binary.AppendUvarint(b, uint64(len(p.pending)))
	for _, r := range p.pending {
		b = binary.AppendUvarint(b, uint64(len(r.Key)))
		b = append(b, r.Key...)
		b = binary.AppendUvarint(b, uint64(len(r.Value)))
		b = append(b, r.Value...)
	}
	return b
}

func (p *sinkPart[T]) decode(b []byte) error {
	if b == nil {
		return nil
	}
	next := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, errors.New("truncated")
		}
		b = b[n:]
		return v, nil
	}
	bytesOf := func() ([]byte, error) {
		n, err := next()
		if err != nil || n > uint64(len(b)) {
			return nil, errors.New("truncated")
		}
		v := append([]byte(nil), b[:n]...)
		b = b[n:]
		return v, nil
	}
	var err error
	if bytes.HasPrefix(b, snapMagic) {
		b = b[len(snapMagic):]
		lin, err := bytesOf()
		if err != nil || len(lin) == 0 || len(lin) > 64 {
			return errors.New("bad lineage")
		}
		floor, err := next()
		if err != nil || floor > math.MaxInt64 {
			return errors.New("bad offset")
		}
		p.lineage, p.floor = string(lin), int64(floor)
	}
	if p.committed, err = next(); err != nil {
		return err
	}
	if p.pendingSeq, err = next(); err != nil {
		return err
	}
	n, err := next()
	if err != nil {
		return err
	}
	for i := uint64(0); i < n; i++ {
		k, err := bytesOf()
		if err != nil {
			return err
		}
		v, err := bytesOf()
		if err != nil {
			return err
		}
		p.pending = append(p.pending, &kgo.Record{Topic: p.topic, Partition: p.part, Key: k, Value: v})
	}
	if len(b) != 0 {
		return errors.New("trailing bytes")
	}
	return nil
}

func (p *sinkPart[T]) Close(ctx context.Context) error {
	if !p.sink.ExactlyOnce && ctx.Err() == nil {
		p.cl.Flush(ctx)
	}
	p.cl.Close()
	return nil
}

var _ core.DurableSink = (*sinkPart[string])(nil)

// lineageOf is the lineage a record of an exactly-once sink names (root,
// the flow's root lineage, for records of before lineages).
func lineageOf(r *kgo.Record, root string) string {
	for _, h := range r.Headers {
		if h.Key == lineageHeader {
			return string(h.Value)
		}
	}
	return root
}

// ParseSeq is exported for tests and tools that audit a topic: the
// transaction sequence number a record of an exactly-once sink carries.
func ParseSeq(r *kgo.Record) (uint64, bool) {
	for _, h := range r.Headers {
		if h.Key == seqHeader && len(h.Value) == 8 {
			return binary.BigEndian.Uint64(h.Value), true
		}
	}
	return 0, false
}
