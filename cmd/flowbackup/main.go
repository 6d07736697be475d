// Command flowbackup backs up, restores and verifies flowkeep recovery
// partitions. See `flowbackup --help`.
package main

import "github.com/flowkeep/flowkeep/flowbackup"

func main() { flowbackup.Main() }
