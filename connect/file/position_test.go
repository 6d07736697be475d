package file

import (
	"bytes"
	"testing"
)

// The checksum covers the first and last 4 KiB before the offset: a byte
// changed there changes it, a byte between them or after the offset does not.
func TestContentSum_CoversFirstAndLastWindow(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 2048) // 32 KiB
	tests := []struct {
		off     int64
		changed int64
		counts  bool
	}{
		{1, 0, true},
		{1, 1, false},
		{100, 99, true},
		{4096, 4095, true},
		{4097, 4096, true},
		{8192, 4096, true},
		{8193, 4096, false},
		{8193, 4097, true},
		{8193, 0, true},
		{20000, 4095, true},
		{20000, 4096, false},
		{20000, 15903, false},
		{20000, 15904, true},
		{20000, 19999, true},
		{20000, 20000, false},
	}
	for _, tt := range tests {
		sum, err := contentSum(bytes.NewReader(data), tt.off)
		if err != nil {
			t.Fatal(err)
		}
		d := bytes.Clone(data)
		d[tt.changed] ^= 1
		sum2, err := contentSum(bytes.NewReader(d), tt.off)
		if err != nil {
			t.Fatal(err)
		}
		if (sum != sum2) != tt.counts {
			t.Errorf("offset %d, byte %d changed: sum changed %v, want %v", tt.off, tt.changed, sum != sum2, tt.counts)
		}
	}
	if _, err := contentSum(bytes.NewReader(data[:10]), 11); err == nil {
		t.Errorf("a checksum over bytes the file does not have")
	}
	if _, err := contentSum(bytes.NewReader(nil), 0); err != nil {
		t.Errorf("offset 0 of an empty file: %v", err)
	}
}

func TestParsePosition(t *testing.T) {
	tests := []struct {
		in   string
		want position
		ok   bool
	}{
		{"0", position{}, true},
		{"1234", position{Offset: 1234}, true},
		{`{"offset":5,"sha256":"ab","path":"/o/c.csv"}`, position{5, "ab", "/o/c.csv"}, true},
		{`{"offset":5,"sha256":"ab","path":"/o/c.csv","more":1}`, position{5, "ab", "/o/c.csv"}, true},
		{"-1", position{}, false},
		{"", position{}, false},
		{"12x", position{}, false},
		{`{"offset":-5,"sha256":"ab","path":"/o"}`, position{}, false},
		{`{"offset":5,"path":"/o"}`, position{}, false},
		{`{"offset":5,"sha256":"ab"}`, position{}, false},
		{`{"offset":5,`, position{}, false},
	}
	for _, tt := range tests {
		got, err := parsePosition([]byte(tt.in))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parsePosition(%q) = %+v, %v; want %+v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func FuzzParsePosition(f *testing.F) {
	f.Add([]byte("42"))
	f.Add(position{Offset: 7, Sum: "00", Path: "/a b/c.csv"}.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePosition(b)
		if err != nil {
			return
		}
		if p.Offset < 0 {
			t.Fatalf("%q: negative offset %d", b, p.Offset)
		}
		if p.checked() {
			if q, err := parsePosition(p.encode()); err != nil || q != p {
				t.Fatalf("%q: %+v does not round-trip: %+v, %v", b, p, q, err)
			}
		}
	})
}
