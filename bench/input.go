package bench

import (
	"bufio"
	"math/rand"
	"os"
)

// LetterWord spells i in base 26 with lower-case letters, so every i gives a
// distinct word that wordcount keeps whole (digits would split it).
func LetterWord(i int) string {
	var b []byte
	for {
		b = append(b, byte('a'+i%26))
		i /= 26
		if i == 0 {
			return string(b)
		}
	}
}

// WriteWordInput writes lines of `words` words drawn from a vocabulary of
// `vocab` words with a skewed (Zipf) distribution, like text.
func WriteWordInput(path string, lines, words, vocab int, seed int64) (totalWords int64, err error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	r := rand.New(rand.NewSource(seed))
	z := rand.NewZipf(r, 1.1, 1, uint64(vocab-1))
	names := make([]string, vocab)
	for i := range names {
		names[i] = LetterWord(i)
	}
	for i := 0; i < lines; i++ {
		for j := 0; j < words; j++ {
			if j > 0 {
				w.WriteByte(' ')
			}
			w.WriteString(names[z.Uint64()])
		}
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return 0, err
	}
	return int64(lines) * int64(words), f.Close()
}
