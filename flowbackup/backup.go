package flowbackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

type backupOptions struct {
	RecoveryDir string
	To          string
	Workers     int
	LockTTL     time.Duration
	Partitions  string
	JSON        bool
	Memory      int64
	Recipients  []string
	TakeOver    bool
	Tags        []string
	SigningKey  string
	Trusted     []string
	Always      bool
	ObjectLock  string
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
last: an interrupted backup leaves nothing visible. With --recipients-file
every object is encrypted with age to those public keys, and chunks are named
by a keyed hash (see the README, "Encrypted backups").

` + objectLockHelp + `

` + fencingHelp + `

` + exitCodesBackup,
		Example: "  flowbackup backup -r /var/lib/flowkeep --to s3://my-bucket/flows/wordcount\n  flowbackup backup -r /var/lib/flowkeep --to file:///mnt/backups/wordcount",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBackup(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.RecoveryDir, "recovery-dir", "r", "", "the flow's recovery directory (as given to flowrun -r)")
	f.StringVar(&o.To, "to", "", "destination URL: file:///path (created if missing), s3://bucket/prefix or gs://bucket/prefix")
	f.IntVar(&o.Workers, "workers", backup.DefaultWorkers, "chunks uploaded at once (within --memory)")
	addMemoryFlag(f, &o.Memory)
	human.DurationVar(f, &o.LockTTL, "lock-ttl", backup.DefaultLockTTL, "how long a partition lock lasts if the agent dies holding it")
	f.BoolVar(&o.JSON, "json", false, "print the results as JSON")
	f.StringVar(&o.Partitions, "partitions", "", "back up only these partitions, e.g. 0,2 or 0-3 (default: every partition in DIR)")
	addRecipientsFlag(f, &o.Recipients)
	addTakeOverFlag(f, &o.TakeOver)
	addTagFlag(f, &o.Tags)
	addSigningKeyFlag(f, &o.SigningKey, "sign every manifest")
	addTrustedKeysFlag(f, &o.Trusted, "; here: other writers' keys, whose lineage claims this backup believes")
	addObjectLockFlag(f, &o.ObjectLock)
	f.BoolVar(&o.Always, "even-unchanged", false, "back up partitions that did not move since their latest backup too (skipped by default, as the agent skips them)")
	o.storageOptions.addFlags(f)
	return cmd
}

// notInside refuses a file:// destination inside the recovery directory (or
// the directory itself): the backups would be lost with it, and flowrun
// would find them beside its partitions.
func notInside(url, recoveryDir string) error {
	path, ok := strings.CutPrefix(url, "file://")
	if !ok {
		return nil
	}
	dst, err1 := filepath.Abs(path)
	rec, err2 := filepath.Abs(recoveryDir)
	if err1 != nil || err2 != nil {
		return nil
	}
	if r, err := filepath.EvalSymlinks(rec); err == nil {
		rec = r
	}
	if d, err := filepath.EvalSymlinks(dst); err == nil {
		dst = d
	}
	if rel, err := filepath.Rel(rec, dst); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		return usagef("--to %s is inside the recovery directory %s: a backup must live apart from what it backs up (another disk, bucket or machine)", url, recoveryDir)
	}
	return nil
}

// fencingHelp explains lineages and fencing to backup and agent users.
const fencingHelp = `Every backup names the lineage (history) of its partitions. A restore onto
another machine, or the files copied elsewhere, start a new lineage; once it is
backed up it claims the location, and a backup of an older lineage is fenced:
it exits 1 (the agent logs FENCED and sets flowkeep_backup_fenced) instead of
interleaving two histories. --take-over makes this machine's lineage the one
restores use (the other machine's agent is then fenced).`

func addTakeOverFlag(f *pflag.FlagSet, v *bool) {
	f.BoolVar(v, "take-over", false, "claim the flow's backups for this machine's lineage even though a newer one claims them (the other machine's backups are then fenced)")
}

func runBackup(ctx context.Context, o backupOptions, out, errOut io.Writer) error {
	if o.RecoveryDir == "" {
		return usagef("-r is required: the flow's recovery directory")
	}
	if err := checkWorkersAndTTL(o.Workers, o.LockTTL); err != nil {
		return err
	}
	if st, err := os.Stat(o.RecoveryDir); err != nil || !st.IsDir() {
		return usagef("recovery directory %s: no such file or directory", o.RecoveryDir)
	}
	// A chunk's compressed frames wait outside the heap (see
	// backup.ChunkSize): the heap needs no slack beyond the budget.
	budget, err := useMemory(o.Memory, 0, 400)
	if err != nil {
		return err
	}
	recipients, err := loadRecipients(o.Recipients)
	if err != nil {
		return err
	}
	if err := notInside(o.To, o.RecoveryDir); err != nil {
		return err
	}
	if err := checkTags(o.Tags); err != nil {
		return err
	}
	bo := backup.Options{Workers: o.Workers, LockTTL: o.LockTTL, Memory: budget, Recipients: recipients, TakeOver: o.TakeOver, SkipUnchanged: !o.Always, Tags: o.Tags}
	if bo.ObjectLock, err = objectLock(o.ObjectLock); err != nil {
		return err
	}
	if bo.SigningKey, err = loadSigningKey(o.SigningKey); err != nil {
		return err
	}
	if bo.TrustedKeys, err = loadTrusted(o.Trusted); err != nil {
		return err
	}
	if o.Partitions != "" {
		ps, err := parsePartitions(o.Partitions)
		if err != nil {
			return err
		}
		bo.Partitions = ps
	}
	s, err := o.openDest(ctx, o.To)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := checkObjectLock(bo.ObjectLock, s); err != nil {
		return err
	}
	bar := newTransferBar(errOut, "backing up (read)")
	var xfer backup.Transfer
	bo.Progress = &xfer
	bar.run(func() (int64, int64, int64) {
		return xfer.BytesRead.Load(), 0, xfer.ObjectsUploaded.Load() + xfer.ObjectsSkipped.Load()
	})
	results, err := backup.BackupDir(ctx, s, o.RecoveryDir, bo)
	bar.finish()
	if o.JSON {
		if jerr := printJSON(out, backupJSON(results)); jerr != nil {
			return jerr
		}
		return err
	}
	printResults(out, results)
	return onceFenced(results, err)
}

// onceFenced says a fence once: when every failure is the same fence (one
// lineage, every partition), the error is that fence alone.
func onceFenced(results []*backup.Result, err error) error {
	var fence error
	for _, r := range results {
		switch {
		case r.Err == nil:
		case !errors.Is(r.Err, backup.ErrFenced):
			return err
		case fence == nil:
			fence = errors.Unwrap(r.Err) // without "back up partition N: "
		}
	}
	if fence == nil {
		return err
	}
	return fence
}

type backupEntry struct {
	Partition       int       `json:"partition"`
	OK              bool      `json:"ok"`
	Error           string    `json:"error,omitempty"`
	Skipped         string    `json:"skipped,omitempty"`
	ID              string    `json:"id,omitempty"`
	Kind            string    `json:"kind,omitempty"`
	Lo              uint64    `json:"lo,omitempty"`
	Hi              uint64    `json:"hi,omitempty"`
	HiTime          time.Time `json:"hi_time,omitzero"`
	UploadedBytes   int64     `json:"uploaded_bytes"`
	UploadedObjects int64     `json:"uploaded_objects"`
	ReusedObjects   int64     `json:"reused_objects"`
	HealedObjects   int64     `json:"healed_objects"`
	Seconds         float64   `json:"seconds"`
	Lineage         string    `json:"lineage,omitempty"`
	Fenced          bool      `json:"fenced,omitempty"`
	Fork            string    `json:"fork,omitempty"`
}

func backupJSON(results []*backup.Result) map[string]any {
	out := []backupEntry{}
	for _, r := range results {
		e := backupEntry{Partition: r.Partition, OK: r.Err == nil, Skipped: r.Skipped, UploadedBytes: r.BytesUploaded,
			UploadedObjects: r.ObjectsUploaded, ReusedObjects: r.ObjectsSkipped, HealedObjects: r.ObjectsHealed, Seconds: r.Duration.Seconds()}
		if r.Err != nil {
			e.Error = r.Err.Error()
		}
		if m := r.Manifest; m != nil {
			e.ID, e.Kind, e.Lo, e.Hi, e.HiTime = m.ID, r.Kind, m.Epochs.Lo, m.Epochs.Hi, m.Epochs.HiTime.UTC()
			e.Lineage = m.LineageOf().ID
		}
		e.Fenced, e.Fork = errors.Is(r.Err, backup.ErrFenced), r.Fork
		out = append(out, e)
	}
	return map[string]any{"partitions": out}
}

func printResults(out io.Writer, results []*backup.Result) {
	for _, r := range results {
		if errors.Is(r.Err, backup.ErrFenced) {
			fmt.Fprintf(out, "partition %d: not backed up: fenced\n", r.Partition)
			continue
		}
		if r.Err != nil {
			fmt.Fprintf(out, "partition %d: FAILED: %v\n", r.Partition, r.Err)
			continue
		}
		if r.Skipped == backup.SkipRestored {
			fmt.Fprintf(out, "partition %d: skipped: restored and not run since; every epoch it holds is in the backups it came from\n", r.Partition)
			continue
		}
		if r.Skipped != "" {
			fmt.Fprintf(out, "partition %d: skipped (%s): backup %s still holds epochs %d..%d\n", r.Partition, r.Skipped, r.Manifest.ID, r.Manifest.Epochs.Lo, r.Manifest.Epochs.Hi)
			continue
		}
		m := r.Manifest
		fmt.Fprintf(out, "partition %d/%d: %s backup %s, epochs %d..%d, uploaded %d chunks (%s), %d confirmed already stored, in %v\n",
			m.Partition.Index, m.Partition.Count, r.Kind, m.ID, m.Epochs.Lo, m.Epochs.Hi, r.ObjectsUploaded, human.Bytes(r.BytesUploaded), r.ObjectsSkipped, r.Duration.Round(time.Millisecond))
		if r.BaseNote != "" {
			fmt.Fprintf(out, "  new base: %s\n", r.BaseNote)
		}
		if r.CaptureNote != "" {
			fmt.Fprintf(out, "  note: %s\n", r.CaptureNote)
		}
		if r.ObjectsHealed > 0 {
			fmt.Fprintf(out, "  healed %d chunks the store had lost or damaged\n", r.ObjectsHealed)
		}
	}
	printLineageEvents(out, results)
}

// printLineageEvents says once what a backup run learned about its flow's
// histories: a take-over, or another machine running the flow.
func printLineageEvents(out io.Writer, results []*backup.Result) {
	for _, r := range results {
		if r.Gate != nil && r.Gate.TookOver {
			fmt.Fprintf(out, "took over: %s now claims the flow's backups; the other machine's backups are fenced\n", r.Gate.Lineage.Describe())
			break
		}
	}
	for _, r := range results {
		if r.Fork != "" {
			fmt.Fprintf(out, "WARNING: two machines are running this flow: %s (flowbackup verify names them)\n", r.Fork)
			break
		}
	}
}
