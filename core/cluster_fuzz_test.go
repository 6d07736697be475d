package core

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/mesh"
)

// fuzzSource has partitions and is never opened: the fuzzed runs are
// planned, not run.
type fuzzSource struct{}

func (fuzzSource) Partitions(context.Context) ([]string, error) {
	return []string{"a", "b", "c", "d"}, nil
}
func (fuzzSource) Open(context.Context, string, []byte) (SourcePartition[string], error) {
	return nil, errors.New("not opened in this test")
}

type fuzzSink struct{}

func (fuzzSink) Partitions(context.Context) ([]string, error) { return []string{"x", "y"}, nil }
func (fuzzSink) PartitionFor(kv KV[int64]) string             { return "x" }
func (fuzzSink) Open(context.Context, string, []byte) (SinkPartition[KV[int64]], error) {
	return nil, errors.New("not opened in this test")
}

// fuzzRecovery makes the planned run one that loads a snapshot (so that
// snapshot rows from peers are expected); it is never asked for anything.
type fuzzRecovery struct{}

func (fuzzRecovery) Begin(context.Context, int) (RunInfo, error) { return RunInfo{}, nil }
func (fuzzRecovery) Load(context.Context, Epoch, func([]Loaded) error) error {
	return nil
}
func (fuzzRecovery) Commit(context.Context, WorkerIndex, Epoch, []Change) error { return nil }
func (fuzzRecovery) WaitDurable(context.Context, Epoch) error                   { return nil }
func (fuzzRecovery) Close() error                                               { return nil }

// fuzzFlow has every kind of step a frame can name: an input, stateless
// steps, a stateful exchange and a sink.
func fuzzFlow() *Flow {
	f := NewFlow("f")
	lines := Input(f, "in", Source[string](fuzzSource{}))
	words := FlatMap(lines, "split", func(l string, emit func(string)) {
		for _, w := range strings.Fields(l) {
			emit(w)
		}
	})
	keyed := KeyOn(words, "key", func(w string) string { return w })
	counts := Fold(keyed, "count", func() int64 { return 0 }, func(a int64, _ string) int64 { return a + 1 })
	Output(counts, "out", Sink[KV[int64]](fuzzSink{}))
	return f
}

func fuzzNode(f *Flow, name string) uint16 {
	for i, n := range f.nodes {
		if strings.HasSuffix(string(n.id), "."+name) {
			return uint16(i)
		}
	}
	panic("no step " + name)
}

// Frames as the mesh carries them (its package doc describes them): a type
// byte, then the frame's fields.
func topicFrame(topic string, payload []byte) []byte {
	return append(append([]byte{2, byte(len(topic))}, topic...), payload...)
}

func dataFrame(node uint16, dst uint32, from int32, kind msgKind, epoch uint64, payload []byte) []byte {
	b := []byte{3}
	b = binary.BigEndian.AppendUint16(b, node)
	b = binary.BigEndian.AppendUint32(b, dst)
	b = binary.BigEndian.AppendUint32(b, uint32(from))
	b = append(b, byte(kind))
	b = binary.BigEndian.AppendUint64(b, epoch)
	return append(b, payload...)
}

func mustEncode(c wireCodec, batch any) []byte {
	b, err := c.encode(nil, batch)
	if err != nil {
		panic(err)
	}
	return b
}

func creditFrame(node uint16, dst, n uint32) []byte {
	b := binary.BigEndian.AppendUint16([]byte{4}, node)
	b = binary.BigEndian.AppendUint32(b, dst)
	return binary.BigEndian.AppendUint32(b, n)
}

// plannedProcess is process 1 of 3 (one worker each) of fuzzFlow, planned
// as a cluster run is, over a detached mesh whose peers' frames the caller
// hands to Receive; loading makes it a run that loads a snapshot.
func plannedProcess(t testing.TB, loading bool) (*execution, *mesh.Mesh) {
	x := &execution{flow: fuzzFlow(), cfg: Config{Workers: 1, MaxDelay: time.Millisecond, EpochInterval: time.Second},
		workers: 3, local: 1, procs: 3, proc: 1, start: 1}
	if loading {
		x.rec, x.start = fuzzRecovery{}, 5
	}
	x.ctx, x.cancel = context.WithCancelCause(context.Background())
	m := mesh.Detached(1, 3, func(err error) { x.cancel(err) })
	x.attachMesh(m)
	// The peers' partition digests, as they would arrive before this
	// process gathers its own.
	parts, _ := fuzzSource{}.Partitions(x.ctx)
	in := x.flow.inputs[0]
	digest := x.partitionsDigest(map[*node][]string{in: parts})
	for _, p := range []int{0, 2} {
		if err := m.Receive(p, topicFrame("$gather", append([]byte("partitions\x00"), digest...))); err != nil {
			t.Fatal(err)
		}
	}
	if err := x.plan(); err != nil {
		t.Fatal(err)
	}
	return x, m
}

// FuzzClusterFrames: no sequence of frames from peers can crash a process
// of a cluster run, through the mesh's dispatch and the runtime's handlers
// (data, credit, clock, snapshot rows, barriers, gathers). The input's first
// byte chooses whether the run loads a snapshot; then come frames, each a
// byte whose low bit says which peer sent it (process 0 or 2), a length
// byte and the frame. The first error ends the input, as it ends a real
// connection's reader.
func FuzzClusterFrames(f *testing.F) {
	fl := fuzzFlow()
	count, out, in := fuzzNode(fl, "count"), fuzzNode(fl, "out"), fuzzNode(fl, "in")
	seq := func(loading byte, frames ...[]byte) []byte {
		b := []byte{loading}
		for i, fr := range frames {
			b = append(b, byte(i), byte(len(fr)))
			b = append(b, fr...)
		}
		return b
	}
	rows := appendStr(appendStr(nil, "f.count"), "w1")
	rows = binary.AppendUvarint(rows, 3)
	rows = appendStr(rows, "7")
	for _, s := range [][]byte{
		seq(0, dataFrame(out, 1, 0, msgAdvance, 2, nil), dataFrame(out, 1, 2, msgData, 1, mustEncode(kvInt64Wire{}, []KV[int64]{{"a", 1}}))),
		seq(0, dataFrame(count, 1, 0, msgData, 1, mustEncode(kvStringWire{}, []KV[string]{{"a", "a"}})), dataFrame(count, 1, 3, msgEOF, 2, nil)),
		seq(0, dataFrame(in, 1, 0, msgData, 1, nil)),
		seq(0, creditFrame(count, 0, 8), creditFrame(out, 2, 8), creditFrame(in, 0, 1), creditFrame(count, 1, 1)),
		seq(0, topicFrame("clock", []byte{3, 1}), topicFrame("clock", []byte{4}), topicFrame("clock.done", nil)),
		seq(1, topicFrame("load.rows", rows), topicFrame("load.rows", rows[:5])),
		seq(0, topicFrame("load.rows", rows)),
		seq(0, topicFrame("$barrier", []byte("ready")), topicFrame("$gather", []byte("x\x00y")), []byte{6}, []byte{7, 'x'}),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		x, m := plannedProcess(t, b[0]&1 == 1)
		defer m.Close(context.Background(), errors.New("done"))
		defer x.cancel(nil)
		b = b[1:]
		for len(b) >= 2 {
			from, n := 0, int(b[1])
			if b[0]&1 == 1 {
				from = 2
			}
			b = b[2:]
			fr := b[:min(n, len(b))]
			b = b[len(fr):]
			if err := m.Receive(from, fr); err != nil {
				return
			}
		}
	})
}

// Frames a peer may not send, or not yet, are refused with an error that
// says why; none is acted on.
func TestClusterFrames_Refused(t *testing.T) {
	fl := fuzzFlow()
	count, out, in, split := fuzzNode(fl, "count"), fuzzNode(fl, "out"), fuzzNode(fl, "in"), fuzzNode(fl, "split")
	for _, tc := range []struct {
		name    string
		loading bool
		from    int
		frame   []byte
		want    string // "" = accepted
	}{
		{"data for a step past the last", false, 0, dataFrame(200, 1, 0, msgData, 1, nil), "data for step 200"},
		{"data for the input", false, 0, dataFrame(in, 1, 0, msgData, 1, nil), "not an exchange"},
		{"data for a stateless step", false, 0, dataFrame(split, 1, 0, msgData, 1, nil), "not an exchange"},
		{"data for a worker past the last", false, 0, dataFrame(count, 9, 0, msgData, 1, nil), "not this process's"},
		{"data for another process's worker", false, 0, dataFrame(count, 2, 0, msgData, 1, nil), "not this process's"},
		{"data from a sender past the last", false, 0, dataFrame(out, 1, 3, msgAdvance, 2, nil), "sender 3"},
		{"data from a negative sender", false, 0, dataFrame(out, 1, -1, msgAdvance, 2, nil), "sender -1"},
		{"data from this process's own sender", false, 0, dataFrame(out, 1, 1, msgAdvance, 2, nil), "not process 0's"},
		{"data from another peer's sender", false, 2, dataFrame(out, 1, 0, msgAdvance, 2, nil), "not process 2's"},
		{"data of an unknown kind", false, 0, dataFrame(out, 1, 0, 9, 2, nil), "unknown kind"},
		{"data whose batch does not decode", false, 0, dataFrame(out, 1, 0, msgData, 1, []byte{0xff}), "malformed"},
		{"an epoch marker from the right sender", false, 0, dataFrame(out, 1, 0, msgAdvance, 2, nil), ""},
		{"credit for the input", false, 0, creditFrame(in, 0, 1), "not an exchange"},
		{"credit for a step past the last", false, 0, creditFrame(99, 0, 1), "credit for step 99"},
		{"credit for this process's worker", false, 0, creditFrame(count, 1, 1), "not process 0's"},
		{"credit for another peer's worker", false, 0, creditFrame(count, 2, 1), "not process 0's"},
		{"credit for a worker past the last", false, 0, creditFrame(count, 7, 1), "not process 0's"},
		{"more credits than a window", false, 0, creditFrame(count, 0, 1000), "more than its window"},
		{"credits from the worker's process", false, 0, creditFrame(count, 0, 8), ""},
		{"a clock from a follower", false, 2, topicFrame("clock", []byte{3}), "only process 0"},
		{"a malformed clock", false, 0, topicFrame("clock", []byte{3, 2}), "malformed clock"},
		{"a clock from the leader", false, 0, topicFrame("clock", []byte{3, 1}), ""},
		{"an end of partition on a follower", false, 0, topicFrame("clock.done", nil), "no handler"},
		{"snapshot rows when none load", false, 0, topicFrame("load.rows", nil), "loads none"},
		{"malformed snapshot rows", true, 0, topicFrame("load.rows", []byte{5, 'a'}), "snapshot rows"},
		{"snapshot rows while loading", true, 0, topicFrame("load.rows", nil), ""},
		{"a topic nobody handles", false, 0, topicFrame("what", nil), "no handler"},
		{"an empty frame", false, 0, nil, "empty frame"},
		{"an unknown frame type", false, 0, []byte{99}, "unknown frame type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, m := plannedProcess(t, tc.loading)
			defer m.Close(context.Background(), errors.New("done"))
			defer x.cancel(nil)
			err := m.Receive(tc.from, tc.frame)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one that says %q", err, tc.want)
			}
		})
	}
}

// Data and credit frames before this process set up its exchanges (a peer
// cannot legitimately send them before every process planned) are refused.
func TestClusterFrames_BeforeThePlan(t *testing.T) {
	x := &execution{flow: fuzzFlow(), cfg: Config{Workers: 1}, workers: 3, local: 1, procs: 3, proc: 1, start: 1}
	x.ctx, x.cancel = context.WithCancelCause(context.Background())
	defer x.cancel(nil)
	m := mesh.Detached(1, 3, func(err error) { x.cancel(err) })
	defer m.Close(context.Background(), errors.New("done"))
	x.attachMesh(m)
	count := fuzzNode(x.flow, "count")
	for _, fr := range [][]byte{dataFrame(count, 1, 0, msgAdvance, 2, nil), creditFrame(count, 0, 1), topicFrame("load.rows", nil)} {
		if err := m.Receive(0, fr); err == nil || !strings.Contains(err.Error(), "before this process was ready") {
			t.Fatalf("frame type %d: err = %v", fr[0], err)
		}
	}
}
