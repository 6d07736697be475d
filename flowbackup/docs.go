package flowbackup

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func newDocsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "docs man DIR",
		Short: "Write man pages for flowbackup and its subcommands into DIR",
		Long: `Write one man page per command (flowbackup.1, flowbackup-backup.1, ...) into
DIR, created if missing; install them with e.g. cp DIR/*.1 /usr/local/share/man/man1.`,
		Example: "  flowbackup docs man ./man && man ./man/flowbackup-restore.1",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 || args[0] != "man" {
				return usagef("usage: flowbackup docs man DIR")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[1]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", dir, err)
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			header := &doc.GenManHeader{Title: "FLOWBACKUP", Section: "1", Source: "flowkeep", Manual: "flowkeep manual"}
			if err := doc.GenManTree(root, header, dir); err != nil {
				return fmt.Errorf("write man pages: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote man pages into %s\n", dir)
			return nil
		},
	}
}
