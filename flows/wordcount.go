package flows

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
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
	counts := core.Stateful(keyed, "count", core.KeyedLogic[struct{}, WordTotal, int64]{
		OnItem: func(_ string, st *WordTotal, _ struct{}, _ func(int64)) *WordTotal {
			if st == nil {
				st = &WordTotal{}
			}
			st.Count++
			st.Seen = true
			return st
		},
		OnEOF: func(_ string, st *WordTotal, emit func(int64)) (*WordTotal, bool) {
			if !st.Seen {
				return st, false
			}
			emit(st.Count)
			st.Seen = false
			return st, true
		},
	})
	out := core.Map(counts, "format", func(kv core.KV[int64]) string {
		return kv.Key + "," + strconv.FormatInt(kv.Value, 10)
	})
	core.Output(out, "write", io.sink())
	return f
}

// WordTotal is wordcount's state per word: the running total, and whether
// the word was seen since the last end of input.
type WordTotal struct {
	Count int64
	Seen  bool
}

// MarshalBinary encodes the total as a varint and a flag byte.
func (w *WordTotal) MarshalBinary() ([]byte, error) {
	b := binary.AppendVarint(make([]byte, 0, 11), w.Count)
	if w.Seen {
		return append(b, 1), nil
	}
	return append(b, 0), nil
}

// UnmarshalBinary decodes MarshalBinary's output.
func (w *WordTotal) UnmarshalBinary(b []byte) error {
	c, n := binary.Varint(b)
	if n <= 0 || len(b) != n+1 {
		return errors.New("wordcount state: malformed")
	}
	w.Count, w.Seen = c, b[n] == 1
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
