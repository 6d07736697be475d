package core

import (
	"context"
	"sort"
	"sync"
)

// memRecovery is an in-memory Recovery for unit tests: it keeps every row and
// frontier, and can "crash" (drop everything committed after a point).
type memRecovery struct {
	mu     sync.Mutex
	rows   map[string][]memRow // step\x00key -> rows by epoch
	execs  []memExec
	frozen bool // a crashed process: commits are dropped
	// crashAt, when set, crashes the store (and calls onCrash) at the first
	// commit reaching that frontier, which is then dropped too.
	crashAt   Epoch
	onCrash   func()
	commitLog []memCommit
}

type memRow struct {
	epoch Epoch
	value []byte
}

type memExec struct {
	workers int
	start   Epoch
	front   map[WorkerIndex]Epoch
}

type memCommit struct {
	w        WorkerIndex
	frontier Epoch
	changes  []Change
}

func newMemRecovery() *memRecovery { return &memRecovery{rows: map[string][]memRow{}} }

func (m *memRecovery) resumeEpoch() Epoch {
	if len(m.execs) == 0 {
		return 1
	}
	last := m.execs[len(m.execs)-1]
	r := Epoch(0)
	for w := 0; w < last.workers; w++ {
		f, ok := last.front[WorkerIndex(w)]
		if !ok {
			f = last.start
		}
		if r == 0 || f < r {
			r = f
		}
	}
	return r
}

func (m *memRecovery) Begin(_ context.Context, workers int) (RunInfo, error) {
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
	m.execs = append(m.execs, memExec{workers: workers, start: r, front: map[WorkerIndex]Epoch{}})
	return RunInfo{Execution: len(m.execs) - 1, StartEpoch: r}, nil
}

func (m *memRecovery) Load(_ context.Context, below Epoch, fn func(StepID, StateKey, []byte) error) error {
	m.mu.Lock()
	keys := make([]string, 0, len(m.rows))
	for k := range m.rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	type item struct {
		step StepID
		key  StateKey
		v    []byte
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
			items = append(items, item{StepID(k[:i]), StateKey(k[i+1:]), best.value})
		}
	}
	m.mu.Unlock()
	for _, it := range items {
		if err := fn(it.step, it.key, it.v); err != nil {
			return err
		}
	}
	return nil
}

func (m *memRecovery) Commit(_ context.Context, w WorkerIndex, frontier Epoch, changes []Change) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashAt > 0 && frontier >= m.crashAt && !m.frozen {
		m.frozen = true
		m.onCrash()
	}
	if m.frozen {
		return nil
	}
	m.commitLog = append(m.commitLog, memCommit{w, frontier, changes})
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

// crash makes the store ignore every later commit, as if the process died.
func (m *memRecovery) crash() {
	m.mu.Lock()
	m.frozen = true
	m.mu.Unlock()
}

func (m *memRecovery) Close() error { return nil }
