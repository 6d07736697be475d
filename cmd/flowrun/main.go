// Command flowrun runs flowkeep's built-in flows (wordcount, logstats) with
// recovery. See `flowrun --help`.
package main

import (
	"github.com/flowkeep/flowkeep/flowrun"
)

func main() { flowrun.Main(flowrun.BuiltinFlows()...) }
