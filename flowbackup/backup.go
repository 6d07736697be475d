package flowbackup

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

type backupOptions struct {
	RecoveryDir string
	To          string
	Workers     int
	LockTTL     time.Duration
	Partitions  string
	storageOptions
}

func newBackupCommand() *cobra.Command {
	var o backupOptions
	cmd := &cobra.Command{
		Use:   "backup -r DIR --to URL",
		Short: "Back up every partition in DIR once (for cron or a Kubernetes CronJob)",
		Long: `Back up every recovery partition in DIR once. Each partition is captured under
one read transaction while flowrun keeps writing, uploaded as content-addressed
zstd chunks (chunks already stored are not uploaded again; after the first
backup, only the rows that changed are), and published by a manifest written
last: an interrupted backup leaves nothing visible.

` + exitCodesHelp,
		Example: "  flowbackup backup -r /var/lib/flowkeep --to s3://my-bucket/flows/wordcount\n  flowbackup backup -r /var/lib/flowkeep --to file:///mnt/backups/wordcount",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBackup(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.RecoveryDir, "recovery-dir", "r", "", "the flow's recovery directory (as given to flowrun -r)")
	f.StringVar(&o.To, "to", "", "destination URL: file:///path, s3://bucket/prefix or gs://bucket/prefix")
	f.IntVar(&o.Workers, "workers", 8, "chunks uploaded at once")
	f.DurationVar(&o.LockTTL, "lock-ttl", 15*time.Minute, "how long a partition lock lasts if the agent dies holding it")
	f.StringVar(&o.Partitions, "partitions", "", "back up only these partitions, e.g. 0,2 or 0-3 (default: every partition in DIR)")
	o.storageOptions.addFlags(f)
	return cmd
}

func runBackup(ctx context.Context, o backupOptions, out io.Writer) error {
	if o.RecoveryDir == "" {
		return usagef("-r is required: the flow's recovery directory")
	}
	if st, err := os.Stat(o.RecoveryDir); err != nil || !st.IsDir() {
		return usagef("recovery directory %s: no such file or directory", o.RecoveryDir)
	}
	bo := backup.Options{Workers: o.Workers, LockTTL: o.LockTTL}
	if o.Partitions != "" {
		ps, err := parsePartitions(o.Partitions)
		if err != nil {
			return err
		}
		bo.Partitions = ps
	}
	s, err := o.open(ctx, o.To)
	if err != nil {
		return err
	}
	defer s.Close()
	results, err := backup.BackupDir(ctx, s, o.RecoveryDir, bo)
	printResults(out, results)
	return err
}

func printResults(out io.Writer, results []*backup.Result) {
	for _, r := range results {
		if r.Err != nil {
			fmt.Fprintf(out, "partition %d: FAILED: %v\n", r.Partition, r.Err)
			continue
		}
		m := r.Manifest
		fmt.Fprintf(out, "partition %d/%d: %s backup %s, epochs %d..%d, uploaded %d chunks (%s), %d confirmed already stored, in %v\n",
			m.Partition.Index, m.Partition.Count, r.Kind, m.ID, m.Epochs.Lo, m.Epochs.Hi, r.ObjectsUploaded, human.Bytes(r.BytesUploaded), r.ObjectsSkipped, r.Duration.Round(time.Millisecond))
		if r.BaseNote != "" {
			fmt.Fprintf(out, "  new base: %s\n", r.BaseNote)
		}
		if r.ObjectsHealed > 0 {
			fmt.Fprintf(out, "  healed %d chunks the store had lost or damaged\n", r.ObjectsHealed)
		}
	}
}
