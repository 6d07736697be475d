// Package flowbackup is the flowbackup command line, flowkeep's
// disaster-recovery companion: it backs up recovery partitions to file://,
// s3:// or gs:// (once, or as a scheduled agent), lists and prunes backups,
// restores the latest snapshot all partitions share onto new machines, and
// verifies buckets. One file per subcommand; cmd/flowbackup only calls Main,
// so the CLI can be embedded and tested.
package flowbackup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/version"
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
  1  failed; verify: restorable, but with problems (corrupt backups, RPO over --max-age);
     encrypted backups that the given identities cannot decrypt
  2  not restorable: no epoch every partition's backups share
  3  usage or access error: bad flag, argument, URL, schedule or config, unknown
     flow, missing bucket, bad credentials, a recovery directory without
     partitions or with another flow's, a restore into partitions already there,
     encrypted backups without --identity-file (restore, verify --deep),
     encrypted and plaintext backups mixed in one location, signed backups
     without --trusted-keys (restore, verify --deep, prune), an unsigned
     backup to a signed location, or --object-lock where objects cannot be
     locked (file://, a bucket without Object Lock or object retention)
  130, 143  stopped by SIGINT or SIGTERM (after cleaning up)`

// Each subcommand lists only its own exit codes.
const (
	exitCodesBackup = `Exit codes:
  0  every partition backed up, or skipped (unchanged, or restored and not run since)
  1  a partition's backup failed, or was fenced (a newer lineage claims the location)
  3  usage or access error: bad flag, URL or config, missing bucket, bad credentials,
     a recovery directory without partitions, with another flow's or with two
     histories, a destination inside the recovery directory, a location of the
     other encryption or signing scheme, --object-lock where objects cannot be
     locked (file://, a bucket without Object Lock or object retention)
  130, 143  stopped by SIGINT or SIGTERM (nothing partial is visible)`
	exitCodesAgent = `Exit codes (the agent runs until stopped; a failed run is logged and counted
in flowkeep_backup_failures_total, not an exit):
  0  stopped by SIGINT or SIGTERM after cleaning up
  3  usage or access error at start: bad flag, schedule, URL or config, missing
     bucket, bad credentials, a location of the other scheme, --object-lock
     with --keep-last or where objects cannot be locked (file://)`
	exitCodesRead = `Exit codes:
  0  success
  1  failed
  3  usage or access error: bad flag, URL or config, missing bucket, bad
     credentials, an unknown --flow or lineage`
	exitCodesRestore = `Exit codes:
  0  restored (or nothing to do with --if-empty / --if-backups-exist)
  1  failed (the backups it needs could not be read or decrypted)
  2  not restorable: no epoch every partition's backups share (with --at:
     none as old as that time)
  3  usage or access error: bad flag, URL or config, missing bucket, bad
     credentials, an unknown --flow, lineage, epoch or partition, --at with
     --epoch or in the future, a target that is not a writable directory or
     already holds partitions (without --force), encrypted backups without
     --identity-file, signed ones without --trusted-keys
  130, 143  stopped by SIGINT or SIGTERM (nothing half-restored is left)`
	exitCodesPrune = `Exit codes:
  0  pruned (or nothing to prune)
  1  failed, or refused because some manifest could not be read (nothing
     deleted), or some object in manifests/ is not a manifest (the backups the
     policy lets go were deleted, no chunk was)
  3  usage or access error: bad flag, URL or config, missing bucket, bad
     credentials, signed backups without --trusted-keys, encrypted ones
     without --recipients-file or --identity-file, an unknown lineage, a
     --temp-dir other users can change (or, for verify --deep, without room)`
)

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
		errors.Is(err, recovery.ErrNoPartitions), errors.Is(err, recovery.ErrForeignFlow), errors.Is(err, recovery.ErrMissingPartitions),
		errors.Is(err, backup.ErrIdentityRequired), errors.Is(err, backup.ErrEncryptionMismatch),
		errors.Is(err, backup.ErrTrustRequired), errors.Is(err, backup.ErrKeysRequired), errors.Is(err, backup.ErrSigningMismatch), errors.Is(err, recovery.ErrTwoLineages),
		errors.Is(err, backup.ErrNoObjectLock):
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

Destinations are URLs: file:///path (a local or mounted directory, created by
backup if missing), s3://bucket/prefix (AWS default credentials; --s3-endpoint
or AWS_ENDPOINT_URL_S3 for S3-compatible servers, which turns on path-style
addressing unless --s3-path-style=false), gs://bucket/prefix (Application
Default Credentials; STORAGE_EMULATOR_HOST for an emulator).

Every flag can also be set as FLOWBACKUP_<FLAG> (capitals, dashes as
underscores: FLOWBACKUP_RECOVERY_DIR, FLOWBACKUP_S3_ENDPOINT) or in the
--config file; the command line wins, then the environment, then the file.

` + configHelp + `

` + exitCodesHelp,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          noArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applySettings(cmd.Root(), cmd)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("flowbackup {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().String("config", "", "YAML file of settings for every subcommand (see flowbackup --help); env FLOWBACKUP_CONFIG")
	root.AddCommand(newBackupCommand(), newAgentCommand(), newListCommand(), newPruneCommand(), newRestoreCommand(), newVerifyCommand(),
		newCopyCommand(), newKeygenCommand(), newVersionCommand(), newDocsCommand(), newUndeleteCommand())
	return root
}

// noArgs refuses arguments (and unknown subcommands) as usage errors.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if cmd.HasSubCommands() {
		return usagef("unknown command %q: flowbackup has %s", args[0], strings.Join(subcommands, ", "))
	}
	return usagef("%s takes no arguments, got %q (flags start with --)", cmd.CommandPath(), strings.Join(args, " "))
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the flowbackup version and VCS revision",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "flowbackup", version.String())
			return nil
		},
	}
}

// checkWorkersAndTTL refuses worker counts and lock TTLs that are given but
// unusable (the library would quietly take its defaults).
func checkWorkersAndTTL(workers int, ttl time.Duration) error {
	if workers < 1 {
		return usagef("--workers must be at least 1, got %d", workers)
	}
	if ttl < backup.MinLockTTL {
		return usagef("--lock-ttl %v is too short: at least %v (a shorter lock could expire while its holder works, letting two agents overlap)", ttl, backup.MinLockTTL)
	}
	if ttl > backup.MaxLockTTL {
		return usagef("--lock-ttl %v is too long: at most %v (locks are renewed while their holder works; the TTL only bounds how long a dead agent blocks others)", ttl, backup.MaxLockTTL)
	}
	return nil
}

// Main runs the flowbackup CLI and exits. SIGINT or SIGTERM stop it after
// cleaning up (a backup or restore in progress leaves nothing visible), with
// exit code 130 or 143.
func Main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	var got os.Signal
	go func() {
		if s, ok := <-sigs; ok {
			got = s
			cancel(fmt.Errorf("stopped by %v", s))
		}
	}()
	err := NewRootCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	signal.Stop(sigs)
	close(sigs)
	code := ExitCode(err)
	if s, ok := got.(syscall.Signal); ok && ctx.Err() != nil {
		err, code = fmt.Errorf("stopped by %v after cleaning up; nothing partial is visible", s), 128+int(s)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowbackup:", err)
	}
	os.Exit(code)
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
