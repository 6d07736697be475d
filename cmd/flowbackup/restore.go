package main

import "github.com/spf13/cobra"

func newRestoreCommand() *cobra.Command {
	return &cobra.Command{Use: "restore", Short: "Restore partitions (see issue 5)", Hidden: true}
}
