package core

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"sync/atomic"
)

// Flow is a dataflow under construction: a forest of steps rooted at inputs.
// Build it with Input and the operator functions, then hand it to Run.
// Construction errors (bad or duplicate step names) are kept and returned by
// Err and Run, so operator calls can be chained without error checks.
type Flow struct {
	name     string
	nodes    []*node
	ids      map[StepID]*node
	inputs   []*node
	err      error
	counters map[string]*Counter
}

// Counter is a per-run metric a flow can bump from its steps (e.g. malformed
// lines skipped). Counters are reported in Result; they are not state and are
// not recovered.
type Counter struct{ v atomic.Int64 }

// Add adds n to the counter.
func (c *Counter) Add(n int64) { c.v.Add(n) }

// Load returns the current value.
func (c *Counter) Load() int64 { return c.v.Load() }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// NewFlow starts a flow. The name is the first element of every step id and
// identifies the flow in its recovery partitions.
func NewFlow(name string) *Flow {
	f := &Flow{name: name, ids: map[StepID]*node{}, counters: map[string]*Counter{}}
	if !nameRE.MatchString(name) {
		f.err = fmt.Errorf("flow name %q: use letters, digits, '_' or '-'", name)
	}
	return f
}

// Name returns the flow's name.
func (f *Flow) Name() string { return f.name }

// Err returns the first construction error, if any.
func (f *Flow) Err() error {
	if f.err != nil {
		return f.err
	}
	if len(f.inputs) == 0 {
		return errors.New("flow " + f.name + " has no Input step")
	}
	return nil
}

// Counter returns the counter with the given name, creating it on first use.
func (f *Flow) Counter(name string) *Counter {
	c, ok := f.counters[name]
	if !ok {
		c = &Counter{}
		f.counters[name] = c
	}
	return c
}

// StepIDs returns every step id of the flow, sorted.
func (f *Flow) StepIDs() []StepID {
	out := make([]StepID, 0, len(f.ids))
	for id := range f.ids {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Stream is the typed output of a step, to be consumed by further steps.
type Stream[T any] struct{ n *node }

type nodeKind int

const (
	kindInput     nodeKind = iota // roots: a Source
	kindStateless                 // runs where its input runs
	kindExchanged                 // keyed operators and outputs: preceded by an exchange
)

// node is one step of the graph. Exactly one of the impl fields is set,
// according to kind.
type node struct {
	flow     *Flow
	id       StepID
	kind     nodeKind
	parent   *node
	children []*node

	input     inputImpl
	stateless statelessImpl
	exchanged exchangedImpl
}

func (f *Flow) add(parent *node, name string, kind nodeKind) *node {
	id := StepID(f.name + "." + name)
	n := &node{flow: f, id: id, kind: kind, parent: parent}
	if f.err == nil {
		switch {
		case !nameRE.MatchString(name):
			f.err = fmt.Errorf("step %q: use letters, digits, '_' or '-' (the flow name and '.' are added)", name)
		case f.ids[id] != nil:
			f.err = fmt.Errorf("step id %q is used twice: step ids must be unique", id)
		}
	}
	f.ids[id] = n
	f.nodes = append(f.nodes, n)
	if parent != nil {
		parent.children = append(parent.children, n)
	} else {
		f.inputs = append(f.inputs, n)
	}
	return n
}

// upstreamRoot returns the input or exchanged node whose segment feeds n.
func (n *node) upstreamRoot() *node {
	p := n.parent
	for p.kind == kindStateless {
		p = p.parent
	}
	return p
}

var errWindowSize = errors.New("window size must be positive")
