package flowtest_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/flowtest"
)

// runningTotals is "your own flow": lines "user amount" in, and for each
// line the user's running total out ("user=total").
func runningTotals(src core.Source[string], out core.Sink[string]) *core.Flow {
	f := core.NewFlow("running-totals")
	lines := core.Input(f, "in", src)
	byUser := core.KeyOn(lines, "user", func(l string) string { return strings.Fields(l)[0] })
	totals := core.StatefulMap(byUser, "total", func(sum *int, l string) (*int, string) {
		if sum == nil {
			sum = new(int)
		}
		var amount int
		fmt.Sscan(strings.Fields(l)[1], &amount)
		*sum += amount
		return sum, fmt.Sprintf("%d", *sum)
	})
	core.Output(core.Map(totals, "fmt", func(kv core.KV[string]) string { return kv.Key + "=" + kv.Value }), "out", out)
	return f
}

func lines(users, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, fmt.Sprintf("u%d %d", i%users, i))
	}
	return out
}

// The flow crashes twice (Abort markers), is resumed each time, and then
// continues over more input after an end of input: its output is exactly
// what one uninterrupted run writes.
func TestExample_CrashResumeExactOutput(t *testing.T) {
	input := lines(7, 300)

	// The reference: one run, no crash.
	want := flowtest.NewSink[string]()
	flowtest.NewRunner(t).RunToEnd(func() *core.Flow {
		return runningTotals(flowtest.NewSource(input...), want)
	})

	// The same input with two crashes and an end of input in between.
	src := flowtest.NewSource(input[:100]...).Abort().Add(input[100:200]...).Abort().Add(input[200:250]...).EOF().Add(input[250:]...)
	src.Pace(10, 3*time.Millisecond) // several epochs before each crash
	got := flowtest.NewSink[string]()
	r := flowtest.NewRunner(t)
	r.RunToEnd(func() *core.Flow { return runningTotals(src, got) }) // dies twice, resumes, ends at the EOF
	if r.Runs != 3 {
		t.Fatalf("%d runs to the first end of input, want 3 (two aborted)", r.Runs)
	}
	r.RunToEnd(func() *core.Flow { return runningTotals(src, got) }) // the continuation

	// Output order across users depends on the workers; each user's own
	// lines keep their order, so compare them sorted.
	g, w := got.Items(), want.Items()
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Fatalf("with crashes the flow wrote %d lines, without %d; they differ", len(g), len(w))
	}
}
