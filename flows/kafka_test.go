package flows

import (
	"strings"
	"testing"
)

// kafka:// inputs and outputs parse into their options; malformed ones
// say what is wrong.
func TestParseKafkaURL(t *testing.T) {
	for _, tc := range []struct {
		url    string
		output bool
		want   string // fmt of the result, or the error
	}{
		{"kafka://b1:9092,b2:9092/t1,t2?tail=true&group=g", false, "[b1:9092 b2:9092] [t1 t2] tail=true group=g"},
		{"kafka://b:9092/t?start=latest", false, "[b:9092] [t] tail=false group="},
		{"kafka://b:9092/out?exactly_once=true", true, "[b:9092] [out] exactly=true"},
		{"kafka://b:9092/", false, "names no broker or no topic"},
		{"kafka:///t", false, "names no broker or no topic"},
		{"kafka://b/t1,t2", true, "an output is one topic"},
		{"kafka://b/t?start=yesterday", false, "use earliest, latest or an RFC 3339 time"},
		{"kafka://b/t?tail=maybe", false, "is not true or false"},
		{"kafka://b/t?exactly_once=true", false, `unknown option "exactly_once"`},
		{"kafka://b/t?group=g", true, `unknown option "group"`},
	} {
		k, err := ParseKafkaURL(tc.url, tc.output)
		got := ""
		switch {
		case err != nil:
			got = err.Error()
		case tc.output:
			got = strings.Join([]string{strings.Join([]string{"[" + strings.Join(k.Brokers, " ") + "]", "[" + strings.Join(k.Topics, " ") + "]"}, " "), "exactly=" + map[bool]string{true: "true", false: "false"}[k.ExactlyOnce]}, " ")
		default:
			got = "[" + strings.Join(k.Brokers, " ") + "] [" + strings.Join(k.Topics, " ") + "] tail=" + map[bool]string{true: "true", false: "false"}[k.Tail] + " group=" + k.Group
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.url, got, tc.want)
		}
	}
	if err := (IO{Input: "kafka://b/", Output: "x"}).Check(); err == nil || !strings.HasPrefix(err.Error(), "--input:") {
		t.Errorf("Check: %v", err)
	}
}
