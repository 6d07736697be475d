package human

import (
	"strings"
	"testing"
	"time"
)

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "256MiB": 256 << 20, "64 MB": 64e6, "2GiB": 2 << 30, "1kib": 1 << 10, "5B": 5} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MiB", "-5MiB", "1.5GiB", "3 parsecs", "99999999999999999999"} {
		if _, err := ParseBytes(bad); err == nil {
			t.Errorf("ParseBytes(%q) accepted", bad)
		}
	}
	// Too large or fractional sizes say so (not only "unknown unit").
	for bad, says := range map[string]string{"8EiB": "too large", "16EiB": "too large", "4EiB": "too large", "4096PiB": "too large", "4611686018427387904": "too large", "99999999999999999999": "too large", "1.5GiB": "whole number"} {
		if _, err := ParseBytes(bad); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("ParseBytes(%q) = %v, want an error saying %q", bad, err, says)
		}
	}
	if got, err := ParseBytes("1PiB"); err != nil || got != 1<<50 {
		t.Errorf("ParseBytes(1PiB) = %d, %v", got, err)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"30": 30 * time.Second, " 0 ": 0, "90s": 90 * time.Second, "1m30s": 90 * time.Second, "5m": 5 * time.Minute, "250ms": 250 * time.Millisecond, "-5m": -5 * time.Minute, "0.5": 500 * time.Millisecond} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "s", ".", "1.2.3", "5 parsecs", "99999999999999999999", "9999999999999"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) accepted", bad)
		}
	}
}

func TestCount(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string
	}{{0, "0 workers"}, {1, "1 worker"}, {2, "2 workers"}} {
		if got := Count(tc.n, "worker"); got != tc.want {
			t.Errorf("Count(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
