// Package flowrun is the flowrun command line: `run` a registered flow with
// recovery, and `recovery init|inspect`. cmd/flowrun registers the built-in
// flows; a user builds a binary for their own flow with Main, which gives it
// the same flags.
package flowrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/internal/version"

	"github.com/flowkeep/flowkeep/core"
)

// FlowOptions are what the CLI passes to a flow's Build function.
type FlowOptions struct {
	Input     string
	Output    string
	Overwrite bool
	Window    time.Duration
	Lateness  time.Duration
}

// FlowSpec registers a flow with the CLI.
type FlowSpec struct {
	Name    string
	Short   string
	Example string
	Build   func(FlowOptions) (*core.Flow, error)
}

// Exit codes, the one place they are defined.
const (
	ExitOK      = 0
	ExitFailure = 1 // the run or command failed
	ExitUsage   = 2 // bad flags or arguments
	// A run stopped by SIGINT exits 130, by SIGTERM 143 (128 + signal),
	// after a clean stop.
)

const exitCodesHelp = `Exit codes:
  0  success
  1  the run or command failed (the message says why and what to do)
  2  usage error: unknown flow, bad flag or argument
  130, 143  stopped by SIGINT or SIGTERM, cleanly (the message says what was saved)`

// usageError marks errors that are the caller's to fix (exit code 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// ExitCode maps an error returned by a command to the process exit code.
func ExitCode(err error) int {
	var u usageError
	var i interruptedError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &u):
		return ExitUsage
	case errors.As(err, &i):
		if s, ok := i.sig.sig.(syscall.Signal); ok {
			return 128 + int(s)
		}
	}
	return ExitFailure
}

// signalError is the cause of a context cancelled by a signal.
type signalError struct{ sig os.Signal }

func (s signalError) Error() string { return "stopped by " + s.sig.String() }

// interruptedError is a run stopped cleanly by a signal.
type interruptedError struct {
	sig signalError
	msg string
}

func (i interruptedError) Error() string { return i.msg }

// signalContext is cancelled, with a signalError as its cause, at SIGINT or
// SIGTERM.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			cancel(signalError{s})
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}

// NewRootCommand builds the flowrun command tree for the given flows.
func NewRootCommand(stdout, stderr io.Writer, specs ...FlowSpec) *cobra.Command {
	root := &cobra.Command{
		Use:   "flowrun",
		Short: "Run stateful dataflows that survive losing their machines",
		Long: `flowrun runs a dataflow on several workers, snapshots its state into SQLite
recovery partitions, resumes from the latest consistent snapshot (with another
worker count, if you like), and continues after end of input.

` + exitCodesHelp,
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("flowrun {{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newRunCommand(specs), newRecoveryCommand(), &cobra.Command{
		Use:   "version",
		Short: "Print the flowrun version and VCS revision",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "flowrun", version.String())
			return nil
		},
	})
	return root
}

// Main runs the flowrun CLI with the given flows and exits.
func Main(specs ...FlowSpec) {
	ctx, stop := signalContext()
	root := NewRootCommand(os.Stdout, os.Stderr, specs...)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowrun:", err)
	}
	os.Exit(ExitCode(err))
}

func flowNames(specs []FlowSpec) string {
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
