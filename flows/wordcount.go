package flows

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	"github.com/flowkeep/flowkeep/core"
)

// WordCount counts lower-cased words (runs of letters) across its input. It
// keeps a running total per word that survives end of input; at end of input
// it writes "word,count" for every word seen in this run, so reading the
// output from the top and taking each word's last line gives the totals over
// all input ever read.
func WordCount(io IO) *core.Flow {
	f := core.NewFlow("wordcount")
	lines := core.Input(f, "read", io.source())
	words := core.FlatMap(lines, "split", SplitWords)
	keyed := core.Map(words, "key", func(w string) core.KV[struct{}] { return core.KV[struct{}]{Key: w} })
	// A word belongs to this pass over the input if it was seen by an
	// execution that started after the previous end of input. Recording the
	// execution's start epoch with the count (rather than a flag reset at
	// end of input) means end of input rewrites no state at all.
	var passStart, execStart atomic.Uint64
	counts := core.Stateful(keyed, "count", core.KeyedLogic[struct{}, WordTotal, int64]{
		Init: func(ri core.RunInfo) {
			passStart.Store(uint64(ri.PreviousEnd) + 1)
			execStart.Store(uint64(ri.StartEpoch))
		},
		OnItem: func(_ string, st *WordTotal, _ struct{}, _ func(int64)) *WordTotal {
			if st == nil {
				st = &WordTotal{}
			}
			st.Count++
			st.SeenAt = execStart.Load()
			return st
		},
		OnEOF: func(_ string, st *WordTotal, emit func(int64)) (*WordTotal, bool) {
			if st.SeenAt >= passStart.Load() {
				emit(st.Count)
			}
			return st, false
		},
	})
	out := core.Map(counts, "format", func(kv core.KV[int64]) string {
		return kv.Key + "," + strconv.FormatInt(kv.Value, 10)
	})
	core.Output(out, "write", io.sink())
	return f
}

// WordTotal is wordcount's state per word: the running total, and the start
// epoch of the execution that last saw the word.
type WordTotal struct {
	Count  int64
	SeenAt uint64
}

// MarshalBinary encodes the state as two varints.
func (w *WordTotal) MarshalBinary() ([]byte, error) { return w.AppendBinary(make([]byte, 0, 20)) }

// AppendBinary appends MarshalBinary's encoding to b.
func (w *WordTotal) AppendBinary(b []byte) ([]byte, error) {
	b = binary.AppendVarint(b, w.Count)
	return binary.AppendUvarint(b, w.SeenAt), nil
}

// UnmarshalBinary decodes MarshalBinary's output.
func (w *WordTotal) UnmarshalBinary(b []byte) error {
	c, n := binary.Varint(b)
	if n <= 0 {
		return errors.New("wordcount state: malformed count")
	}
	s, m := binary.Uvarint(b[n:])
	if m <= 0 || n+m != len(b) {
		return errors.New("wordcount state: malformed epoch")
	}
	w.Count, w.SeenAt = c, s
	return nil
}

// SplitWords emits the lower-cased words of line: maximal runs of letters.
// Already lower-case ASCII words are emitted as substrings of line, without
// copying.
func SplitWords(line string, emit func(string)) {
	start := -1
	upper := false
	word := func(end int) {
		w := line[start:end]
		if upper {
			w = strings.ToLower(w)
		}
		emit(w)
		start, upper = -1, false
	}
	for i := 0; i < len(line); {
		c := line[i]
		if c < utf8.RuneSelf {
			if lc := c | 0x20; lc >= 'a' && lc <= 'z' {
				if start < 0 {
					start = i
				}
				if c <= 'Z' {
					upper = true
				}
			} else if start >= 0 {
				word(i)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(line[i:])
		if unicode.IsLetter(r) {
			if start < 0 {
				start = i
			}
			if unicode.ToLower(r) != r {
				upper = true
			}
		} else if start >= 0 {
			word(i)
		}
		i += size
	}
	if start >= 0 {
		word(len(line))
	}
}
