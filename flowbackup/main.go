// Package flowbackup is the flowbackup command line, flowkeep's
// disaster-recovery companion: it backs up recovery partitions to file://,
// s3:// or gs:// (once, or as a scheduled agent), lists and prunes backups,
// restores the latest snapshot all partitions share onto new machines, and
// verifies buckets. One file per subcommand; cmd/flowbackup only calls Main,
// so the CLI can be embedded and tested.
package flowbackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/recovery"
)

// Exit codes, the one place they are defined.
const (
	exitOK            = 0
	exitFailed        = 1 // a backup or restore failed; verify: restorable, but with problems
	exitNotRestorable = 2 // verify / restore: no epoch every partition's backups share
	exitUsageOrAccess = 3 // bad flags, URL, schedule or config; missing bucket; bad credentials
)

const exitCodesHelp = `Exit codes:
  0  success (verify: healthy)
  1  failed; verify: restorable, but with problems (corrupt backups, RPO over --max-age)
  2  not restorable: no epoch every partition's backups share
  3  usage or access error: bad flag, URL, schedule or config, missing bucket,
     bad credentials, a recovery directory without partitions or with another flow's`

// usageError marks errors the caller must fix (exit 3).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitError carries a specific exit code with its message.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// ExitCode maps an error returned by a command to the process exit code.
func ExitCode(err error) int {
	var u usageError
	var e exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &e):
		return e.code
	case errors.As(err, &u), errors.Is(err, backup.ErrAccess), errors.Is(err, backup.ErrNoBucket),
		errors.Is(err, recovery.ErrNoPartitions), errors.Is(err, recovery.ErrForeignFlow), errors.Is(err, recovery.ErrMissingPartitions):
		return exitUsageOrAccess
	}
	return exitFailed
}

// NewRootCommand builds the flowbackup command tree.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "flowbackup",
		Short: "Back up, restore and verify flowkeep recovery partitions",
		Long: `flowbackup ships consistent backups of flowkeep recovery partitions to object
storage and brings them back onto new machines.

Destinations are URLs: file:///path (a local or mounted directory), s3://bucket/prefix
(AWS default credentials; --s3-endpoint and --s3-path-style for S3-compatible
servers), gs://bucket/prefix (Application Default Credentials;
STORAGE_EMULATOR_HOST for an emulator).

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newBackupCommand(), newAgentCommand(), newListCommand(), newPruneCommand(), newRestoreCommand(), newVerifyCommand())
	return root
}

// Main runs the flowbackup CLI and exits.
func Main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := NewRootCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowbackup:", err)
	}
	os.Exit(ExitCode(err))
}
