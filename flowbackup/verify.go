package flowbackup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

type verifyOptions struct {
	From       string
	Deep       bool
	JSON       bool
	MaxAge     time.Duration
	Flow       string
	Workers    int
	Sample     float64
	Newest     bool
	Quarantine bool
	Memory     int64
	TempDir    string
	Keys       []string
	Recipients []string
	Trusted    []string
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
that their epoch ranges overlap, and the restorable window: from the oldest
state the usable backups restore (restore --at reaches back that far) to the
newest. --deep also downloads every object the backups
name, once however many backups share it, and checks its sha256; it rebuilds
each base image once in a temporary directory (PRAGMA integrity_check) and lays
each delta over a copy of its base (the last over the base itself where no
other base shares its chunks), checking each result against its manifest.
It reports the objects and bytes it read. It rebuilds about 256 MiB of images
at a time, or one partition's if they are larger (its image, a copy of it
where a delta is laid over a copy, and the delta), and an image goes as soon as
its checks are done and no other image needs its chunks (the two largest are
kept to be written over): the temporary directory (--temp-dir, default
$TMPDIR) needs room for that and two more images (exit 3 if it runs out). It
is locked while the check runs; the next deep verify there (or a restore that
works in a scratch directory there) removes one a killed check left.

--newest limits --deep to the backups the newest restore would use; --sample P
reads a random P percent of the objects and checks only their sha256 (a
routine audit that covers everything over repeated runs). Both imply --deep.

verify reads one location (restore reads several: --from A --from B).

Exit codes:
  0  healthy
  1  restorable, but with problems (corrupt or unreadable backups, several
     flows in one place, restorable epoch older than --max-age, two machines
     backing up one flow: two lineages alive after they parted)
  2  not restorable
  3  usage or access error (an unknown --flow included)`,
		Example: "  flowbackup verify --from s3://my-bucket/flows/wc --max-age 15m\n  flowbackup verify --from gs://bkt/wc --deep --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("sample") && o.Sample <= 0 {
				return usagef("--sample must be a percentage above 0 and at most 100, got %g", o.Sample)
			}
			return runVerify(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.From, "from", "", "backup URL: file:///path, s3://bucket/prefix or gs://bucket/prefix")
	f.BoolVar(&o.Deep, "deep", false, "download and check every object and rebuild every image")
	f.BoolVar(&o.JSON, "json", false, "print the report as JSON")
	human.DurationVar(f, &o.MaxAge, "max-age", 0, "report a problem if the RPO is longer than this (e.g. 15m): how long ago the backups were last known to hold everything the flow had, counting the agent's heartbeats for an idle flow")
	f.StringVar(&o.Flow, "flow", "", "audit only this flow (its name or uid)")
	f.IntVar(&o.Workers, "workers", 32, "requests at once (per partition for --deep, within --memory)")
	f.Float64Var(&o.Sample, "sample", 0, "with --deep: read only this percentage of the objects, chosen at random, and check their sha256 (0 < P <= 100)")
	f.BoolVar(&o.Newest, "newest", false, "with --deep: check only the backups the newest restore would use")
	f.BoolVar(&o.Quarantine, "quarantine", false, "with --deep: mark chunks found damaged in the store so the next backup heals them (needs write access; without it verify writes nothing)")
	f.StringVar(&o.TempDir, "temp-dir", "", "where --deep rebuilds images (default $TMPDIR)")
	addMemoryFlag(f, &o.Memory)
	addIdentityFlag(f, &o.Keys)
	addCheckRecipientsFlag(f, &o.Recipients)
	addTrustedKeysFlag(f, &o.Trusted, "")
	o.storageOptions.addFlags(f)
	return cmd
}

func runVerify(ctx context.Context, o verifyOptions, out, errOut io.Writer) error {
	if o.MaxAge < 0 {
		return usagef("--max-age must not be negative, got %v", o.MaxAge)
	}
	if o.Sample < 0 || o.Sample > 100 {
		return usagef("--sample must be a percentage above 0 and at most 100, got %g", o.Sample)
	}
	if o.Sample > 0 || o.Newest {
		o.Deep = true
	}
	if o.Sample > 0 && o.Newest {
		return usagef("--sample and --newest cannot be combined: --sample reads objects of every backup")
	}
	if _, err := useMemory(o.Memory, 0, 100); err != nil {
		return err
	}
	if o.Workers < 1 {
		return usagef("--workers must be at least 1, got %d", o.Workers)
	}
	if o.TempDir != "" {
		if st, err := os.Stat(o.TempDir); err != nil || !st.IsDir() {
			return usagef("--temp-dir %s: not a directory (deep verify rebuilds images there)", o.TempDir)
		}
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
	auth, keys, err := loadAuth(o.Recipients, o.Keys)
	if err != nil {
		return err
	}
	trusted, err := loadTrusted(o.Trusted)
	if err != nil {
		return err
	}
	if o.Quarantine && !o.Deep {
		return usagef("--quarantine needs --deep (only a deep check reads the chunks)")
	}
	vo := restore.VerifyOptions{Deep: o.Deep, Sample: o.Sample, Newest: o.Newest, Quarantine: o.Quarantine, MaxAge: o.MaxAge, FlowUID: uid, Workers: o.Workers,
		Memory: o.Memory, TempDir: o.TempDir, Keys: keys, Trusted: trusted, Auth: auth}
	var bar *transferBar
	if o.Deep {
		bar = newTransferBar(errOut, "verifying")
		var pc progressCounter
		vo.Progress = pc.update
		bar.run(pc.poll)
	}
	rep, err := restore.Verify(ctx, s, vo)
	bar.finish()
	switch {
	case errors.Is(err, restore.ErrUnsafeTempDir):
		return usageError{err}
	case restore.NoRoom(err):
		// The check did not finish: nothing is known of the backups.
		return usageError{fmt.Errorf("the deep check ran out of room where it rebuilds images: %w; point --temp-dir at a roomier directory", err)}
	case err != nil:
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
		if o.Deep {
			read := fmt.Sprintf("read %s, %s of the %s the checked backups store", human.Count(rep.ObjectsRead, "object"), human.Bytes(rep.BytesRead), human.Bytes(rep.BytesStored))
			if rep.Sampled > 0 {
				read += fmt.Sprintf(" (a %g%% sample: %s)", o.Sample, human.Count(rep.Sampled, "object"))
			}
			fmt.Fprintln(out, read)
		}
		if rep.Locked > 0 {
			fmt.Fprintf(out, "encrypted with age: %s checked from their plaintext index only (names, sizes, epochs); --deep --identity-file FILE reads them whole\n",
				human.Count(rep.Locked, "backup"))
		}
		for _, f := range rep.Flows {
			if f.Restorable {
				fmt.Fprintf(out, "flow %s (%s): restorable to epoch %d of %s, lineage %s; RPO %v; %d of %d backups healthy\n", f.Name, f.UID, f.Epoch,
					f.EpochTime.UTC().Format(time.RFC3339), recovery.ShortID(f.Lineage), (time.Duration(f.RPOSeconds * float64(time.Second))).Round(time.Second), f.Healthy, f.Backups)
				fmt.Fprintf(out, "  restorable window: from epoch %d (%s) to epoch %d (%s)\n", f.RestorableFromEpoch, fmtTime(f.RestorableFrom), f.RestorableToEpoch, fmtTime(f.RestorableTo))
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
