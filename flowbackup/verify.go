package flowbackup

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/restore"
)

type verifyOptions struct {
	From    string
	Deep    bool
	JSON    bool
	MaxAge  time.Duration
	Flow    string
	Workers int
	storageOptions
}

func newVerifyCommand() *cobra.Command {
	var o verifyOptions
	cmd := &cobra.Command{
		Use:   "verify --from URL [--deep] [--json]",
		Short: "Audit backups: can the flow be restored, to which epoch, how old is it",
		Long: `Audit the backups under URL and say whether, and to which epoch and wall time,
each flow can be restored, and how old that is (the RPO).

Quick mode reads every manifest and checks that every object it names is
present with the right size, that every partition has a usable backup, and
that their epoch ranges overlap. --deep also downloads every object, checks its
sha256, rebuilds each partition image in a temporary directory and runs
PRAGMA integrity_check on it.

Exit codes:
  0  healthy
  1  restorable, but with problems (corrupt or unreadable backups, several
     flows in one place, restorable epoch older than --max-age)
  2  not restorable
  3  usage or access error (an unknown --flow included)`,
		Example: "  flowbackup verify --from s3://my-bucket/flows/wc --max-age 15m\n  flowbackup verify --from gs://bkt/wc --deep --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVerify(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.From, "from", "", "backup URL: file:///path, s3://bucket/prefix or gs://bucket/prefix")
	f.BoolVar(&o.Deep, "deep", false, "download and check every object and rebuild every image")
	f.BoolVar(&o.JSON, "json", false, "print the report as JSON")
	f.DurationVar(&o.MaxAge, "max-age", 0, "report a problem if the restorable epoch is older than this (e.g. 15m)")
	f.StringVar(&o.Flow, "flow", "", "audit only this flow (its name or uid)")
	f.IntVar(&o.Workers, "workers", 32, "requests at once")
	o.storageOptions.addFlags(f)
	return cmd
}

func runVerify(ctx context.Context, o verifyOptions, out io.Writer) error {
	if o.MaxAge < 0 {
		return usagef("--max-age must not be negative, got %v", o.MaxAge)
	}
	if o.Workers < 1 {
		return usagef("--workers must be at least 1, got %d", o.Workers)
	}
	s, err := o.open(ctx, o.From)
	if err != nil {
		return err
	}
	defer s.Close()
	uid, err := resolveFlow(ctx, s, o.Flow)
	if err != nil {
		return err
	}
	rep, err := restore.Verify(ctx, s, restore.VerifyOptions{Deep: o.Deep, MaxAge: o.MaxAge, FlowUID: uid, Workers: o.Workers})
	if err != nil {
		return err
	}
	if o.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "%s: %s (%s check of %s, %s)\n", rep.From, rep.Status, rep.Mode, human.Count(rep.Checked, "backup"), human.Count(rep.Objects, "object"))
		for _, f := range rep.Flows {
			if f.Restorable {
				fmt.Fprintf(out, "flow %s (%s): restorable to epoch %d of %s, %v ago; %d of %d backups healthy\n", f.Name, f.UID, f.Epoch,
					f.EpochTime.UTC().Format(time.RFC3339), (time.Duration(f.AgeSeconds) * time.Second).Round(time.Second), f.Healthy, f.Backups)
			} else {
				fmt.Fprintf(out, "flow %s (%s): NOT restorable; %d of %d backups healthy\n", f.Name, f.UID, f.Healthy, f.Backups)
			}
		}
		for _, p := range rep.Problems {
			fmt.Fprintf(out, "problem: %s\n", describe(p))
		}
		for _, p := range rep.Notes {
			fmt.Fprintf(out, "note: %s\n", describe(p))
		}
	}
	switch rep.Status {
	case restore.StatusNotRestorable:
		return exitError{exitNotRestorable, fmt.Errorf("not restorable")}
	case restore.StatusDegraded:
		return exitError{exitFailed, fmt.Errorf("restorable, with %s", human.Count(len(rep.Problems), "problem"))}
	}
	return nil
}

// describe says where a problem or note is, then what it is.
func describe(p restore.Problem) string {
	where := ""
	if p.Partition != nil {
		where = fmt.Sprintf("partition %d ", *p.Partition)
	}
	if p.Backup != "" {
		where += "backup " + p.Backup + ": "
	}
	return where + p.Message
}
