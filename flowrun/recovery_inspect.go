package flowrun

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/recovery"
)

type recoveryInspectOptions struct {
	Dir   string
	JSON  bool
	Count bool
}

func newRecoveryInspectCommand() *cobra.Command {
	var o recoveryInspectOptions
	cmd := &cobra.Command{
		Use:   "inspect DIR",
		Short: "Show what the recovery partitions in DIR hold, without changing them",
		Long: `Print, per partition: index/count, flow identity, executions, frontiers,
commit epoch, restorable epoch range with wall times, row counts and file
sizes; then the epoch the next run would resume at, or why it cannot (and then
exit 1, so a check script notices). Safe to run while flowrun writes to DIR.`,
		Example: "  flowrun recovery inspect /var/lib/flowkeep\n  flowrun recovery inspect /var/lib/flowkeep --json | jq .resume_epoch",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Dir = args[0]
			return runRecoveryInspect(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print JSON instead of text")
	cmd.Flags().BoolVar(&o.Count, "count", false, "also count rows, tombstones and keys (reads every key: slow on a large state)")
	return cmd
}

type inspectReport struct {
	Dir         string           `json:"dir"`
	Partitions  []*recovery.Info `json:"partitions"`
	ResumeEpoch recovery.Epoch   `json:"resume_epoch,omitempty"`
	Problem     string           `json:"problem,omitempty"`
}

func runRecoveryInspect(ctx context.Context, o recoveryInspectOptions, out io.Writer) error {
	dr, err := recovery.InspectDir(ctx, o.Dir, recovery.InspectOptions{Count: o.Count})
	if err != nil {
		return err
	}
	infos, finding := dr.Partitions, dr.Problem
	rep := inspectReport{Dir: o.Dir, Partitions: infos}
	if finding != nil {
		rep.Problem = finding.Error()
	} else {
		rep.ResumeEpoch = dr.Resume.Epoch
	}
	// A directory the next run cannot resume from fails the command (after
	// the report), with the finding as the error.
	result := func() error {
		if finding != nil {
			return fmt.Errorf("cannot resume from %s: %w", o.Dir, finding)
		}
		return nil
	}
	if o.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
		return result()
	}
	for _, in := range infos {
		fmt.Fprintf(out, "partition %d/%d  %s\n", in.Index, in.Count, filepath.Base(in.Path))
		name := in.FlowName
		if name == "" {
			name = "(not run yet)"
		}
		fmt.Fprintf(out, "  flow            %s (uid %s)\n", name, in.FlowUID)
		pending := ""
		if in.Pending {
			pending = "; restored, the next run adopts it"
		}
		fmt.Fprintf(out, "  history         %s%s\n", in.Lineage.Describe(), pending)
		fmt.Fprintf(out, "  restorable      epochs %d..%d (%s .. %s)\n", in.Lo, in.Hi, fmtTime(in.LoTime), fmtTime(in.HiTime))
		fmt.Fprintf(out, "  commit epoch    %d\n", in.CommitEpoch)
		fmt.Fprintf(out, "  intervals       snapshot %v, backup %v\n", in.SnapshotInterval, in.BackupInterval)
		for _, ex := range in.Executions {
			fmt.Fprintf(out, "  execution %-4d  %s from epoch %d, started %s\n", ex.Number, human.Count(ex.Workers, "worker"), ex.ResumeEpoch, fmtTime(ex.Started))
		}
		if len(in.Frontiers) > 0 {
			ws := make([]int, 0, len(in.Frontiers))
			for w := range in.Frontiers {
				ws = append(ws, int(w))
			}
			sort.Ints(ws)
			fmt.Fprint(out, "  frontiers      ")
			for _, w := range ws {
				fmt.Fprintf(out, " w%d=%d", w, in.Frontiers[recovery.WorkerIndex(w)])
			}
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "  changelog       %d segments (%s) not yet compacted; compacted below epoch %d\n", in.Segments, human.Bytes(in.SegmentBytes), in.CompactedEpoch)
		if in.Counted {
			fmt.Fprintf(out, "  rows            %d (%d tombstones) over %d keys\n", in.Rows, in.Tombstones, in.Keys)
		}
		fmt.Fprintf(out, "  files           db %s, wal %s, shm %s\n", human.Bytes(in.FileBytes), human.Bytes(in.WALBytes), human.Bytes(in.SHMBytes))
	}
	if finding != nil {
		fmt.Fprintf(out, "cannot resume: %v\n", finding)
	} else {
		fmt.Fprintf(out, "next run resumes at epoch %d\n", rep.ResumeEpoch)
	}
	return result()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
