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
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowkeep/flowkeep/core"
)

// Sink writes items to Topic, one sink partition per topic partition
// ("topic/N", each written by one worker; an item goes to the partition of
// its key's hash, so one key's items keep their order).
//
// At least once (the default): records are produced as they are written
// (without lingering, so they are in the topic within milliseconds) and
// each epoch close waits for them to be acknowledged. After a crash, the
// output of the epochs after the last durable one is produced again.
//
// Exactly once (ExactlyOnce, needs recovery): an epoch's records are kept
// in the epoch's snapshot, tagged with the epoch, and produced in one Kafka
// transaction per epoch only when that epoch is durable (the runtime says so
// through core.DurableSink: Durable(below) publishes exactly the kept epochs
// below `below`, oldest first). Each record carries the transaction's
// sequence number and the flow's lineage (its history, see core.RunInfo) in
// headers. A crash before a transaction commits leaves it to the next run,
// which finds the kept records in its snapshot and produces them unless the
// partition's last committed record of the same lineage already carries
// their sequence number (the crash came after the commit). A restore to an
// older epoch starts a new lineage whose sequence numbers repeat the old
// one's: its transactions are judged only against its own records (those
// after the offset where it began), and the output of the epochs after the
// restored one is produced again (the sink warns). Epochs that were never
// durable were never produced, and their input is read again, so nothing is
// lost or repeated. Consumers must read with isolation level
// read_committed, and the topic must be written by this flow only. The
// transactional id is derived from the flow's uid and the partition, so a
// rescaled or restored run fences any transaction a dead worker left open.
// Output reaches the topic one epoch (-s) after it is computed.
type Sink[T any] struct {
	Brokers []string
	Topic   string
	// Encode gives an item's key and value.
	Encode      func(T) (key, value []byte, err error)
	ExactlyOnce bool
	// Outage bounds retries of an unreachable broker, listing the topic's
	// partitions included (DefaultOutage).
	Outage time.Duration
	Opts   []kgo.Opt

	parts atomic.Pointer[[]string] // the topic's partitions, once listed
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

// Partitions implements core.Sink. The topic must exist. The list is asked
// of the brokers, retrying for up to the outage bound; once listed it is
// kept (a run lists once), a failure is not (the next call asks again).
func (s *Sink[T]) Partitions(ctx context.Context) ([]string, error) {
	if parts := s.parts.Load(); parts != nil {
		return *parts, nil
	}
	parts, err := topicPartitions(ctx, s.Brokers, s.Outage, s.Opts, s.Topic)
	if err != nil {
		return nil, fmt.Errorf("cannot list the partitions of topic %q (retried for %v): %w; create the topic, or make the brokers reachable (or allow a longer outage), and run again", s.Topic, s.outage(), err)
	}
	s.parts.Store(&parts)
	return parts, nil
}

// PartitionFor implements core.Sink: the topic partition of the item's key,
// among the partitions Partitions listed (the runtime lists them first).
func (s *Sink[T]) PartitionFor(item T) string {
	parts := s.listed()
	key, _, err := s.Encode(item)
	if err != nil || len(parts) == 1 {
		return parts[0]
	}
	h := fnv.New32a()
	h.Write(key)
	return parts[int(h.Sum32()%uint32(len(parts)))]
}

// listed is the partition list Partitions got (the runtime lists before
// it routes anything).
func (s *Sink[T]) listed() []string {
	if parts := s.parts.Load(); parts != nil {
		return *parts
	}
	return []string{s.Topic + "/?"}
}

// Open implements core.Sink.
func (s *Sink[T]) Open(ctx context.Context, part string, resume []byte) (core.SinkPartition[T], error) {
	if s.Encode == nil {
		return nil, errors.New("kafka sink: Encode is not set")
	}
	topic, p, err := parsePart(part)
	if err != nil {
		return nil, err
	}
	base := partBase[T]{sink: s, topic: topic, part: p, name: part}
	if !s.ExactlyOnce {
		// No lingering: a record goes out as soon as no request is in
		// flight (batches still form under load), so written output is
		// visible at once. Opts may set another linger.
		opts := append([]kgo.Opt{kgo.ProducerLinger(0)}, s.Opts...)
		sp := &atLeastOncePart[T]{partBase: base}
		if sp.cl, err = newClient(s.Brokers, s.Outage, opts, kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.DefaultProduceTopic(topic)); err != nil {
			return nil, err
		}
		return sp, nil
	}
	ri := core.RunInfoFrom(ctx)
	if !ri.Recovery || ri.FlowUID == "" {
		return nil, errors.New("kafka sink: exactly-once output needs recovery (run with -r DIR): without snapshots a crash cannot be resumed without repeating output")
	}
	sp := &exactlyOncePart[T]{partBase: base}
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
	// Every epoch below the start epoch is durable, and no other.
	sp.heard, sp.last = ri.StartEpoch, ri.StartEpoch-min(ri.StartEpoch, 1)
	// Epochs the last run kept for transactions it may not have
	// committed: produce them unless the partition already has them (of
	// the lineage that made them).
	if len(sp.pending) > 0 {
		if err := sp.resumePending(ctx, ri.StartEpoch); err != nil {
			sp.cl.Close()
			return nil, err
		}
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

// partBase is what both kinds of sink partition hold.
type partBase[T any] struct {
	sink  *Sink[T]
	cl    *kgo.Client
	topic string
	part  int32
	name  string
}

func (p *partBase[T]) record(it T) (*kgo.Record, error) {
	k, v, err := p.sink.Encode(it)
	if err != nil {
		return nil, fmt.Errorf("kafka sink %s: encode: %w", p.name, err)
	}
	return &kgo.Record{Topic: p.topic, Partition: p.part, Key: k, Value: v}, nil
}

// atLeastOncePart produces records as they are written.
type atLeastOncePart[T any] struct {
	partBase[T]
	inflight sync.WaitGroup
	mu       sync.Mutex
	perr     error
}

var _ core.Flusher = (*atLeastOncePart[string])(nil)

// Write implements core.SinkPartition: the records are produced at once.
// ctx ending fails the records still waiting for buffer space.
func (p *atLeastOncePart[T]) Write(ctx context.Context, items []T) error {
	for _, it := range items {
		r, err := p.record(it)
		if err != nil {
			return err
		}
		p.inflight.Add(1)
		p.cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				p.mu.Lock()
				if p.perr == nil {
					p.perr = fmt.Errorf("kafka sink %s: produce: %w", p.name, err)
				}
				p.mu.Unlock()
			}
			p.inflight.Done()
		})
	}
	return p.produceErr()
}

func (p *atLeastOncePart[T]) produceErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.perr
}

// Flush implements core.Flusher. Records are sent as they are written, so
// there is nothing to push; it reports a failed produce early.
func (p *atLeastOncePart[T]) Flush(context.Context) error { return p.produceErr() }

// Commit implements core.SinkPartition: it waits until every record written
// so far is acknowledged (or ctx ends).
func (p *atLeastOncePart[T]) Commit(ctx context.Context, _ core.Epoch) ([]byte, error) {
	if err := p.cl.Flush(ctx); err != nil {
		return nil, fmt.Errorf("kafka sink %s: wait for acknowledgements: %w", p.name, err)
	}
	p.inflight.Wait()
	return nil, p.produceErr()
}

// Close implements core.SinkPartition: it waits for the records in flight
// unless ctx has ended.
func (p *atLeastOncePart[T]) Close(ctx context.Context) error {
	var err error
	if ctx.Err() == nil {
		err = p.cl.Flush(ctx)
	}
	p.cl.Close()
	return err
}

// keptEpoch is an exactly-once partition's output of one committed epoch,
// kept until the epoch is durable, and the sequence number its transaction
// carries.
type keptEpoch struct {
	epoch   core.Epoch // 0: of a snapshot from before epochs were kept (below the resume epoch)
	seq     uint64
	records []*kgo.Record
}

// exactlyOncePart publishes each committed epoch's records in a transaction
// once the epoch is durable.
type exactlyOncePart[T any] struct {
	partBase[T]
	open      []*kgo.Record // written during the open epoch
	pending   []keptEpoch   // committed, waiting to be durable, oldest first
	committed uint64        // the last sequence number published
	published core.Epoch    // the newest epoch published (0: none)
	last      core.Epoch    // the last epoch committed (or the one before the start)
	heard     core.Epoch    // every epoch below it is durable, as the runtime said
	// lineage made the sequence numbers above; its records are at or
	// after offset floor (root is the flow's root lineage: records
	// without a lineage header are its).
	lineage, root string
	floor         int64
}

var _ core.DurableSink = (*exactlyOncePart[string])(nil)

// Write implements core.SinkPartition: the records are kept for the open
// epoch's transaction.
func (p *exactlyOncePart[T]) Write(_ context.Context, items []T) error {
	for _, it := range items {
		r, err := p.record(it)
		if err != nil {
			return err
		}
		p.open = append(p.open, r)
	}
	return nil
}

// Commit implements core.SinkPartition: the records written in epoch are
// kept, with the sequence number of their transaction, in the snapshot.
func (p *exactlyOncePart[T]) Commit(_ context.Context, epoch core.Epoch) ([]byte, error) {
	if epoch <= p.last {
		return nil, fmt.Errorf("kafka sink %s: commit of epoch %d after epoch %d: epochs must increase", p.name, epoch, p.last)
	}
	if epoch < p.heard {
		return nil, fmt.Errorf("kafka sink %s: commit of epoch %d, which was already said to be durable (every epoch below %d): its records could never be published", p.name, epoch, p.heard)
	}
	p.last = epoch
	if len(p.open) > 0 {
		seq := p.committed + 1
		if n := len(p.pending); n > 0 {
			seq = p.pending[n-1].seq + 1
		}
		p.pending = append(p.pending, keptEpoch{epoch: epoch, seq: seq, records: p.open})
		p.open = nil
	}
	return p.encode(), nil
}

// Durable implements core.DurableSink: the kept epochs below `below` are
// published, each in its own transaction, oldest first. Every kept epoch
// must be below it (the runtime says so before committing the next), and
// below never goes back: anything else is a broken protocol, which fails
// rather than publishing what may not be durable or dropping what is.
func (p *exactlyOncePart[T]) Durable(ctx context.Context, below core.Epoch) error {
	if below < p.heard {
		return fmt.Errorf("kafka sink %s: told that every epoch below %d is durable after being told so of every epoch below %d (epoch %d is published): the durable frontier must not go back", p.name, below, p.heard, p.published)
	}
	for _, k := range p.pending {
		if k.epoch >= below {
			return fmt.Errorf("kafka sink %s: told that every epoch below %d is durable, but epoch %d was committed already: the runtime must say which epochs are durable before it commits the next, so its records are neither published early nor held back", p.name, below, k.epoch)
		}
	}
	p.heard = below
	for len(p.pending) > 0 {
		if err := p.publish(ctx, p.pending[0]); err != nil {
			return err
		}
		p.committed, p.published = p.pending[0].seq, p.pending[0].epoch
		p.pending[0] = keptEpoch{}
		p.pending = p.pending[1:]
	}
	p.pending = nil
	return nil
}

// resumePending produces the epochs a snapshot kept, each unless the
// partition already has its transaction (of the lineage that made it).
// They are all below start, the run's start epoch, so durable.
func (p *exactlyOncePart[T]) resumePending(ctx context.Context, start core.Epoch) error {
	for _, k := range p.pending {
		if k.epoch >= start {
			return fmt.Errorf("kafka sink %s: the stored position keeps epoch %d's records, but the run resumes at epoch %d, so that epoch is not durable: the position is not from before the resume epoch", p.name, k.epoch, start)
		}
	}
	last, err := p.lastCommittedSeq(ctx)
	if err != nil {
		return err
	}
	for _, k := range p.pending {
		if last < k.seq {
			if err := p.publish(ctx, k); err != nil {
				return err
			}
		}
		p.committed, p.published = k.seq, k.epoch
	}
	p.pending = nil
	return nil
}

// publish produces k's records in one transaction and commits it.
func (p *exactlyOncePart[T]) publish(run context.Context, k keptEpoch) error {
	ctx, cancel := context.WithTimeout(run, p.sink.outage())
	defer cancel()
	if err := p.cl.BeginTransaction(); err != nil {
		return fmt.Errorf("kafka sink %s: begin transaction: %w", p.name, err)
	}
	seq := binary.BigEndian.AppendUint64(nil, k.seq)
	for _, r := range k.records {
		r.Headers = append(r.Headers[:0], kgo.RecordHeader{Key: seqHeader, Value: seq}, kgo.RecordHeader{Key: lineageHeader, Value: []byte(p.lineage)})
	}
	if err := p.cl.ProduceSync(ctx, k.records...).FirstErr(); err != nil {
		// Try to abort, for a few seconds at most and not at all once the
		// run is over; the next run's producer fences the transaction
		// anyway.
		actx, acancel := context.WithTimeout(run, 5*time.Second)
		p.cl.EndTransaction(actx, kgo.TryAbort)
		acancel()
		return fmt.Errorf("kafka sink %s: produce epoch %d: %w", p.name, k.epoch, err)
	}
	if err := p.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return fmt.Errorf("kafka sink %s: commit transaction %d (epoch %d): %w", p.name, k.seq, k.epoch, err)
	}
	return nil
}

// endOffset is the partition's last stable offset: Open fenced any
// transaction left open, so every record before it is decided.
func (p *exactlyOncePart[T]) endOffset(ctx context.Context) (int64, error) {
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
func (p *exactlyOncePart[T]) lastCommittedSeq(ctx context.Context) (uint64, error) {
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
func (p *exactlyOncePart[T]) scanSeq(ctx context.Context, from, end int64) (uint64, bool, error) {
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

// Snapshot formats. The first, from before lineages, is the uvarints of
// the last published sequence number and the kept one, then the kept
// records. snapMagic starts the second, which first names the lineage and
// its first offset; epochMagic the current one, which keeps several epochs,
// each with its epoch number. Were the first format's published sequence
// number 0, its next uvarint (the kept one) is at most 1, so its first two
// bytes are never either magic.
var (
	snapMagic  = []byte{0x00, 0xfe}
	epochMagic = []byte{0x00, 0xfd}
)

// encode is the snapshot: epochMagic, the lineage and its first offset,
// the last published sequence number, then the kept epochs (count, then of
// each its epoch, sequence number, record count and each record's key and
// value).
func (p *exactlyOncePart[T]) encode() []byte {
	b := append([]byte(nil), epochMagic...)
	b = binary.AppendUvarint(b, uint64(len(p.lineage)))
	b = append(b, p.lineage...)
	b = binary.AppendUvarint(b, uint64(p.floor))
	b = binary.AppendUvarint(b, p.committed)
	b = binary.AppendUvarint(b, uint64(len(p.pending)))
	for _, k := range p.pending {
		b = binary.AppendUvarint(b, uint64(k.epoch))
		b = binary.AppendUvarint(b, k.seq)
		b = binary.AppendUvarint(b, uint64(len(k.records)))
		for _, r := range k.records {
			b = binary.AppendUvarint(b, uint64(len(r.Key)))
			b = append(b, r.Key...)
			b = binary.AppendUvarint(b, uint64(len(r.Value)))
			b = append(b, r.Value...)
		}
	}
	return b
}

// decode reads a snapshot of any of the three formats. The kept records of
// the older two are one epoch whose number was not stored (0): it is below
// the resume epoch, as every snapshot's epochs are.
func (p *exactlyOncePart[T]) decode(b []byte) error {
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
	records := func() ([]*kgo.Record, error) {
		n, err := next()
		if err != nil {
			return nil, err
		}
		if n > uint64(len(b)) { // each record takes at least 2 bytes
			return nil, errors.New("truncated")
		}
		rs := make([]*kgo.Record, 0, n)
		for i := uint64(0); i < n; i++ {
			k, err := bytesOf()
			if err != nil {
				return nil, err
			}
			v, err := bytesOf()
			if err != nil {
				return nil, err
			}
			rs = append(rs, &kgo.Record{Topic: p.topic, Partition: p.part, Key: k, Value: v})
		}
		return rs, nil
	}
	epochs := bytes.HasPrefix(b, epochMagic)
	if epochs || bytes.HasPrefix(b, snapMagic) {
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
	var err error
	if p.committed, err = next(); err != nil {
		return err
	}
	if !epochs {
		seq, err := next()
		if err != nil {
			return err
		}
		rs, err := records()
		if err != nil {
			return err
		}
		if len(rs) > 0 {
			p.pending = []keptEpoch{{seq: seq, records: rs}}
		}
	} else {
		n, err := next()
		if err != nil {
			return err
		}
		if n > uint64(len(b)) {
			return errors.New("truncated")
		}
		seq := p.committed
		for i := uint64(0); i < n; i++ {
			e, err := next()
			if err != nil {
				return err
			}
			s, err := next()
			if err != nil {
				return err
			}
			rs, err := records()
			if err != nil {
				return err
			}
			if s != seq+1 || (i > 0 && core.Epoch(e) <= p.pending[i-1].epoch) {
				return fmt.Errorf("kept epoch %d (transaction %d) does not follow transaction %d", e, s, seq)
			}
			seq = s
			p.pending = append(p.pending, keptEpoch{epoch: core.Epoch(e), seq: s, records: rs})
		}
	}
	if len(b) != 0 {
		return errors.New("trailing bytes")
	}
	return nil
}

// Close implements core.SinkPartition. Kept epochs not yet published stay
// in the snapshot for the next run.
func (p *exactlyOncePart[T]) Close(context.Context) error {
	p.cl.Close()
	return nil
}

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
