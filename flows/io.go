package flows

import (
	"fmt"
	"os"

	"github.com/flowkeep/flowkeep/connect/file"
	"github.com/flowkeep/flowkeep/connect/kafka"
	"github.com/flowkeep/flowkeep/connect/stdio"
	"github.com/flowkeep/flowkeep/core"
)

// IO names a built-in flow's input and output. Input is a file, a directory
// (one partition per file), "-" for standard input or a kafka:// URL
// (KafkaURL); Output is a file, "-" for standard output or a kafka:// URL.
// Lines written to a file or to standard output are visible at once, in
// the order the workers write them (with several workers, their lines
// interleave), never held until the epoch ends. Check them with Check
// first.
type IO struct {
	Input     string
	Output    string
	Overwrite bool // a fresh run may replace an existing non-empty output
}

// Check reports a malformed kafka:// input or output.
func (io IO) Check() error {
	if IsKafka(io.Input) {
		if _, err := ParseKafkaURL(io.Input, false); err != nil {
			return fmt.Errorf("--input: %w", err)
		}
	}
	if IsKafka(io.Output) {
		if _, err := ParseKafkaURL(io.Output, true); err != nil {
			return fmt.Errorf("--output: %w", err)
		}
	}
	return nil
}

func (io IO) source() core.Source[string] {
	if IsKafka(io.Input) {
		k, _ := ParseKafkaURL(io.Input, false)
		src := kafka.Lines(k.Brokers, k.Topics)
		src.Start, src.Tail, src.Group = k.Start, k.Tail, k.Group
		return src
	}
	if io.Input == "-" {
		return stdio.Stdin{}
	}
	if st, err := os.Stat(io.Input); err == nil && st.IsDir() {
		return file.DirSource{Dir: io.Input}
	}
	return file.Source{Path: io.Input}
}

func (io IO) sink() core.Sink[string] {
	if IsKafka(io.Output) {
		k, _ := ParseKafkaURL(io.Output, true)
		return kafka.LineSink(k.Brokers, k.Topics[0], k.ExactlyOnce)
	}
	if io.Output == "-" {
		return stdio.Stdout{}
	}
	// Not Sorted: lines are visible as they are written, in the order the
	// workers write them, rather than held until the epoch ends.
	return file.Sink{Path: io.Output, Overwrite: io.Overwrite}
}
