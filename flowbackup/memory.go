package flowbackup

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

// memoryHelp explains the budget next to --workers.
const memoryHelp = "chunk data in memory at once, all partitions together (e.g. 64MiB, 1GiB); with the default, peak memory stays under about 256 MiB. More only helps a fast link with slow requests; --workers is how many requests go at once within it"

// addMemoryFlag adds --memory to a command that moves chunks.
func addMemoryFlag(f *pflag.FlagSet, n *int64) {
	*n = backup.DefaultMemory
	f.Var(human.Size{N: n}, "memory", memoryHelp)
}

// useMemory checks the budget and keeps the process's heap near it, plus
// slack, collecting once it grew by gcPercent (see
// backup.LimitProcessMemory).
func useMemory(n, slack int64, gcPercent int) (*backup.Budget, error) {
	if err := backup.ValidateMemory(n); err != nil {
		return nil, usagef("--memory: %v", err)
	}
	backup.LimitProcessMemory(n, slack, gcPercent, os.Getenv)
	return backup.NewBudget(n), nil
}
