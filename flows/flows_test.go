package flows

import (
	"strings"
	"testing"
	"time"
)

func TestSplitWords(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"hello world", "hello|world"},
		{"Hello, WORLD! it's 2026", "hello|world|it|s"},
		{"  spaces\tand\ttabs  ", "spaces|and|tabs"},
		{"Grüße aus Köln", "grüße|aus|köln"},
		{"ΣΟΦΙΑ σοφία", "σοφια|σοφία"},
		{"snake_case-and-dash", "snake|case|and|dash"},
		{"x1y2z", "x|y|z"},
	}
	for _, tt := range tests {
		var got []string
		SplitWords(tt.in, func(w string) { got = append(got, w) })
		if strings.Join(got, "|") != tt.want {
			t.Errorf("SplitWords(%q) = %q, want %q", tt.in, strings.Join(got, "|"), tt.want)
		}
	}
}

func TestWordTotal_RoundTrip(t *testing.T) {
	for _, w := range []WordTotal{{0, 0}, {1, 7}, {1 << 40, 1 << 50}} {
		b, _ := w.MarshalBinary()
		var got WordTotal
		if err := got.UnmarshalBinary(b); err != nil || got != w {
			t.Fatalf("%+v -> %v -> %+v, %v", w, b, got, err)
		}
	}
	var w WordTotal
	if err := w.UnmarshalBinary([]byte{0x80}); err == nil {
		t.Fatal("truncated state accepted")
	}
}

func TestParseLogLine(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"2026-11-24T10:00:05Z api 120", true},
		{"2026-11-24T10:00:05.123+01:00 db -4.5", true},
		{"2026-11-24 api 1", false},
		{"2026-11-24T10:00:05Z api", false},
		{"2026-11-24T10:00:05Z api NaN", false},
		{"2026-11-24T10:00:05Z api 1 extra", false},
	}
	for _, tt := range tests {
		l, ok := ParseLogLine(tt.in)
		if ok != tt.ok {
			t.Errorf("ParseLogLine(%q) ok = %v", tt.in, ok)
		}
		if ok && l.Time.Location() != time.UTC {
			t.Errorf("time not in UTC")
		}
	}
}

func FuzzParseLogLine(f *testing.F) {
	f.Add("2026-11-24T10:00:05Z api 120")
	f.Add("garbage")
	f.Fuzz(func(t *testing.T, s string) {
		l, ok := ParseLogLine(s)
		if ok && (l.Key == "" || strings.ContainsAny(l.Key, " \t\n")) {
			t.Fatalf("bad key %q from %q", l.Key, s)
		}
	})
}

func FuzzSplitWords(f *testing.F) {
	f.Add("Hello, World")
	f.Fuzz(func(t *testing.T, s string) {
		SplitWords(s, func(w string) {
			if w == "" || strings.ToLower(w) != w {
				t.Fatalf("word %q from %q", w, s)
			}
		})
	})
}
