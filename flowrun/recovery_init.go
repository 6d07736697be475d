package flowrun

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/recovery"
)

func newRecoveryCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "recovery",
		Short: "Create and inspect recovery partitions",
	}
	cmd.AddCommand(newRecoveryInitCommand(), newRecoveryInspectCommand())
	return cmd
}

type recoveryInitOptions struct {
	Dir   string
	Count int
}

func newRecoveryInitCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "init DIR N",
		Short: "Create N recovery partitions in the existing directory DIR",
		Long: `Create part-0.sqlite3 … part-(N-1).sqlite3 in DIR, which must exist and hold no
partitions. N is fixed for the life of the flow; more partitions spread
snapshot writes and backups, and let a cluster spread them over machines.`,
		Example: "  flowrun recovery init /var/lib/flowkeep 4",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 {
				return usagef("N must be a positive number of partitions, got %q", args[1])
			}
			return runRecoveryInit(cmd.Context(), recoveryInitOptions{Dir: args[0], Count: n}, cmd.OutOrStdout())
		},
	}
}

func runRecoveryInit(ctx context.Context, o recoveryInitOptions, out io.Writer) error {
	if st, err := os.Stat(o.Dir); err != nil || !st.IsDir() {
		return usagef("%s: not a directory (create it first: recovery init makes the partitions in an existing directory)", o.Dir)
	}
	if err := recovery.Init(ctx, o.Dir, o.Count); err != nil {
		return err
	}
	fmt.Fprintf(out, "created %d recovery partitions in %s\n", o.Count, o.Dir)
	return nil
}
