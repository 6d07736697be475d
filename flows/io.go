package flows

import (
	"os"

	"github.com/flowkeep/flowkeep/connect/file"
	"github.com/flowkeep/flowkeep/connect/stdio"
	"github.com/flowkeep/flowkeep/core"
)

// IO names a built-in flow's input and output. Input is a file, a directory
// (one partition per file) or "-" for standard input; Output is a file or "-"
// for standard output.
type IO struct {
	Input     string
	Output    string
	Overwrite bool // a fresh run may replace an existing non-empty output
}

func (io IO) source() core.Source[string] {
	if io.Input == "-" {
		return stdio.Stdin{}
	}
	if st, err := os.Stat(io.Input); err == nil && st.IsDir() {
		return file.DirSource{Dir: io.Input}
	}
	return file.Source{Path: io.Input}
}

func (io IO) sink() core.Sink[string] {
	if io.Output == "-" {
		return stdio.Stdout{}
	}
	return file.Sink{Path: io.Output, Sorted: true, Overwrite: io.Overwrite}
}
