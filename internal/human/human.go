// Package human formats numbers for people.
package human

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Bytes formats n with a binary unit: "512 B", "1.5 KiB", "3.0 GiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Errors of ParseBytes a caller may tell apart.
var (
	ErrTooLarge = errors.New("too large")           // 4 EiB or more
	ErrNotWhole = errors.New("give a whole number") // a fraction, e.g. 1.5GiB
)

// ParseBytes parses a size: a whole number with an optional unit, binary
// (KiB, MiB, GiB, TiB, PiB, EiB) or decimal (KB, MB, GB, TB, PB, EB), or
// B: "256MiB", "64 MB", "1048576". Sizes of 4 EiB (2^62 bytes) and more
// are too large.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: give a whole number with an optional unit, e.g. 256MiB", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("size %q is %w", s, ErrTooLarge)
		}
		return 0, fmt.Errorf("size %q: %v", s, err)
	}
	if i < len(t) && (t[i] == '.' || t[i] == ',') {
		return 0, fmt.Errorf("size %q: %w in a smaller unit (e.g. 1536MiB, not 1.5GiB)", s, ErrNotWhole)
	}
	units := map[string]int64{"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40, "PIB": 1 << 50, "EIB": 1 << 60,
		"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15, "EB": 1e18, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
	m, ok := units[strings.ToUpper(strings.TrimSpace(t[i:]))]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (use B, KiB, MiB, GiB, TiB, PiB, EiB or KB, MB, GB, TB, PB, EB)", s, strings.TrimSpace(t[i:]))
	}
	if n >= ((1<<62)+m-1)/m { // n*m >= 2^62 (4 EiB), without overflowing
		return 0, fmt.Errorf("size %q is %w", s, ErrTooLarge)
	}
	return n * m, nil
}

// ParseDuration parses a duration as Go writes it ("90s", "1m30s", "5m"),
// with days and weeks too ("7d", "1d12h", "2w"), or, like Bytewax, a bare
// number of seconds ("30" is 30s, "0.5" is 500ms).
func ParseDuration(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	unit := ""
	if t != "" && strings.Trim(t, "0123456789.") == "" {
		unit = "s"
	}
	t = daysRE.ReplaceAllStringFunc(t, func(m string) string {
		n, err := strconv.ParseFloat(m[:len(m)-1], 64)
		if err != nil {
			return m
		}
		per := 24.0
		if m[len(m)-1] == 'w' {
			per = 7 * 24
		}
		return strconv.FormatFloat(n*per, 'f', -1, 64) + "h"
	})
	d, err := time.ParseDuration(t + unit)
	if err != nil {
		return 0, fmt.Errorf("duration %q: give seconds (30) or a number with a unit (30s, 5m, 1h30m, 7d)", s)
	}
	return d, nil
}

var daysRE = regexp.MustCompile(`[0-9.]+[dw]`)

// DurationVar defines a duration flag read by ParseDuration, with its
// default shown once in the help.
func DurationVar(f *pflag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	DurationVarP(f, p, name, "", def, usage)
}

// DurationVarP is DurationVar with a shorthand.
func DurationVarP(f *pflag.FlagSet, p *time.Duration, name, short string, def time.Duration, usage string) {
	*p = def
	f.VarP(Duration{D: p}, name, short, usage)
}

// Duration is a flag value (pflag.Value) read by ParseDuration.
type Duration struct{ D *time.Duration }

func (d Duration) String() string {
	if d.D == nil || *d.D == 0 {
		return "0" // pflag shows no default for "0"
	}
	return d.D.String()
}

// Set implements pflag.Value.
func (d Duration) Set(s string) error {
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d.D = v
	return nil
}

// Type implements pflag.Value.
func (d Duration) Type() string { return "duration" }

// Count says "1 worker", "0 workers", "3 workers": n and the noun, plural
// (with an s) unless n is 1.
func Count[N int | int64 | uint64](n N, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// Size is a pflag.Value for a byte size (ParseBytes) stored in *N.
type Size struct{ N *int64 }

func (s Size) String() string {
	if s.N == nil {
		return "0"
	}
	if *s.N%(1<<20) == 0 {
		return fmt.Sprintf("%dMiB", *s.N>>20)
	}
	return strconv.FormatInt(*s.N, 10)
}

// Set implements pflag.Value.
func (s Size) Set(v string) error {
	n, err := ParseBytes(v)
	if err != nil {
		return err
	}
	*s.N = n
	return nil
}

// Type implements pflag.Value.
func (s Size) Type() string { return "size" }
