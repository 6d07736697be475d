package flowrun

import (
	"errors"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/flows"
)

// BuiltinFlows returns the flows flowrun ships.
func BuiltinFlows() []FlowSpec {
	return []FlowSpec{
		{
			Name:    "wordcount",
			Short:   "running word totals across runs (a word is a run of letters, lower-cased: digits and punctuation split words, so \"w8805\" counts as \"w\")",
			Example: "  flowrun run wordcount --input testdata/sample.txt --output counts.csv -w 2\n  flowrun run wordcount -i input/ -o counts.csv -w 4 -r /var/lib/flowkeep -s 10s -b 5m",
			Build: func(o FlowOptions) (*core.Flow, error) {
				io, err := builtinIO(o)
				if err != nil {
					return nil, err
				}
				return flows.WordCount(io), nil
			},
		},
		{
			Name:    "logstats",
			Short:   "per-key count/sum/min/max over tumbling windows",
			Example: "  flowrun run logstats -i app.log -o stats.csv --window 1m --lateness 10s",
			Build: func(o FlowOptions) (*core.Flow, error) {
				io, err := builtinIO(o)
				if err != nil {
					return nil, err
				}
				if o.Window <= 0 {
					return nil, errors.New("--window must be positive")
				}
				if o.Lateness < 0 {
					return nil, errors.New("--lateness must not be negative")
				}
				return flows.LogStats(flows.LogStatsConfig{IO: io, Window: o.Window, Lateness: o.Lateness}), nil
			},
		},
	}
}

func builtinIO(o FlowOptions) (flows.IO, error) {
	if o.Input == "" {
		return flows.IO{}, errors.New("--input is required (a file, a directory, or - for stdin)")
	}
	if o.Output == "" {
		return flows.IO{}, errors.New("--output is required (a file, or - for stdout)")
	}
	io := flows.IO{Input: o.Input, Output: o.Output, Overwrite: o.Overwrite}
	return io, io.Check()
}
