package core_test

import (
	"context"
	"sort"
	"sync"

	"github.com/flowkeep/flowkeep/core"
)

// memRecovery is an in-memory core.Recovery for unit tests: it keeps every row and
// frontier, and can "crash" (drop everything committed after a point).
type memRecovery struct {
	mu     sync.Mutex
	rows   map[string][]memRow // step\x00key -> rows by epoch
	execs  []memExec
	frozen bool // a crashed process: commits are dropped
	// crashAt, when set, crashes the store (and calls onCrash) at the first
	// commit reaching that frontier, which is then dropped too.
	crashAt core.Epoch
	onCrash func()
	// crashOnlyResumable holds the crash until every worker has committed
	// past epoch 1, so the crashed run leaves something to resume from;
	// crashResume is then the epoch a resume must start at.
	crashOnlyResumable bool
	crashResume        core.Epoch
	commitLog          []memCommit
}

type memRow struct {
	epoch core.Epoch
	value []byte
}

type memExec struct {
	workers int
	start   core.Epoch
	front   map[core.WorkerIndex]core.Epoch
}

type memCommit struct {
	w        core.WorkerIndex
	frontier core.Epoch
	changes  []core.Change
}

func newMemRecovery() *memRecovery { return &memRecovery{rows: map[string][]memRow{}} }

func (m *memRecovery) resumeEpoch() core.Epoch {
	if len(m.execs) == 0 {
		return 1
	}
	last := m.execs[len(m.execs)-1]
	r := core.Epoch(0)
	for w := 0; w < last.workers; w++ {
		f, ok := last.front[core.WorkerIndex(w)]
		if !ok {
			f = last.start
		}
		if r == 0 || f < r {
			r = f
		}
	}
	return r
}

func (m *memRecovery) Begin(_ context.Context, workers int) (core.RunInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.frozen = false
	r := m.resumeEpoch()
	// Trim rows at or after the resume epoch: they belong to epochs that will be re-run.
	for k, rs := range m.rows {
		keep := rs[:0]
		for _, row := range rs {
			if row.epoch < r {
				keep = append(keep, row)
			}
		}
		m.rows[k] = keep
	}
	m.execs = append(m.execs, memExec{workers: workers, start: r, front: map[core.WorkerIndex]core.Epoch{}})
	return core.RunInfo{Execution: len(m.execs) - 1, StartEpoch: r}, nil
}

func (m *memRecovery) Load(_ context.Context, below core.Epoch, fn func([]core.Loaded) error) error {
	m.mu.Lock()
	keys := make([]string, 0, len(m.rows))
	for k := range m.rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	type item struct {
		step  core.StepID
		key   core.StateKey
		epoch core.Epoch
		v     []byte
	}
	var items []item
	for _, k := range keys {
		var best *memRow
		for i, row := range m.rows[k] {
			if row.epoch < below && (best == nil || row.epoch > best.epoch) {
				best = &m.rows[k][i]
			}
		}
		if best != nil && best.value != nil {
			i := 0
			for k[i] != 0 {
				i++
			}
			items = append(items, item{core.StepID(k[:i]), core.StateKey(k[i+1:]), best.epoch, best.value})
		}
	}
	m.mu.Unlock()
	for _, it := range items {
		if err := fn([]core.Loaded{{Step: it.step, Key: it.key, Epoch: it.epoch, Value: it.v}}); err != nil {
			return err
		}
	}
	return nil
}

func (m *memRecovery) Commit(_ context.Context, w core.WorkerIndex, frontier core.Epoch, changes []core.Change) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashAt > 0 && frontier >= m.crashAt && !m.frozen && (!m.crashOnlyResumable || m.resumeEpoch() > 1) {
		m.frozen = true
		m.crashResume = m.resumeEpoch()
		m.onCrash()
	}
	if m.frozen {
		return nil
	}
	// Commit must not keep the caller's slice: the runtime reuses it.
	m.commitLog = append(m.commitLog, memCommit{w, frontier, append([]core.Change(nil), changes...)})
	for _, c := range changes {
		k := string(c.Step) + "\x00" + string(c.Key)
		rs := m.rows[k]
		replaced := false
		for i := range rs {
			if rs[i].epoch == c.Epoch {
				rs[i].value = c.Value
				replaced = true
			}
		}
		if !replaced {
			rs = append(rs, memRow{c.Epoch, c.Value})
		}
		m.rows[k] = rs
	}
	ex := &m.execs[len(m.execs)-1]
	if frontier > ex.front[w] {
		ex.front[w] = frontier
	}
	return nil
}

// WaitDurable implements core.Recovery: commits here are durable at once.
func (m *memRecovery) WaitDurable(context.Context, core.Epoch) error { return nil }

func (m *memRecovery) Close() error { return nil }
