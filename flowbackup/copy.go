package flowbackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

type copyOptions struct {
	From       string
	To         string
	Flow       string
	JSON       bool
	Workers    int
	Memory     int64
	LockTTL    time.Duration
	Checksum   bool
	Trusted    []string
	Recipients []string
	storageOptions
}

const exitCodesCopy = `Exit codes:
  0  copied (or the destination already held everything)
  1  failed, or some backups were not copied (each is listed, with why)
  3  usage or access error: bad flag, URL or config, missing bucket, bad
     credentials, an unknown --flow, --from and --to the same location, a
     destination whose backups are of another scheme (encrypted or plaintext,
     signed or unsigned) than the source's`

func newCopyCommand() *cobra.Command {
	var o copyOptions
	cmd := &cobra.Command{
		Use:   "copy --from URL --to URL",
		Short: "Copy backups to a second location (any two of file, s3, gs), incrementally, as stored",
		Long: `Copy the backups under --from that --to lacks, as they are stored (byte for
byte: no key is needed; encrypted backups stay sealed and signed ones stay
signed, so --to's readers check them with the same keys), like restic copy or
pgBackRest's repo2. Any two of file://, s3:// and gs:// (a missing file://
destination is created).

--to is consistent at every moment: its config.json first (when it has none
and the source's scheme needs one), then each backup's missing chunks and,
once every chunk it names is in --to, its manifest, oldest first; then each
partition's latest pointer and heartbeat, then the lineage registry. An
interrupted copy leaves nothing half-copied that a restore would take, and the
next copy goes on from there.

It is incremental: a backup --to holds (same manifest, same size) is skipped
without being read; one listing of --to's chunks tells which chunks it holds
(a chunk's name is the hash of its content, so the same name and stored size
is the same chunk). --checksum also reads what --to holds and compares it with
the source (every backup in scope and its chunks), writing again what differs.
A chunk --to's verify --deep quarantined is written again, and its marker
removed.

Not copied, and listed (exit 1): backups whose manifest cannot be read
(broken), strays (a plaintext backup in an encrypted location, an unsigned one
in a signed location; with --trusted-keys or --recipients-file also those
signed by another key or not tagged for a recipient), backups a chunk of which
is missing, damaged or quarantined in the source (a prune running there while
the copy reads it is one cause), and partitions whose lock another writer
holds in --to (the next copy brings them).

The source is read without locks. In --to the copy writes as a backup does,
under the lock of each partition it writes to, and it does not start while a
prune runs there (and a prune does not start while it runs): prune --from the
copy (with its own --keep-* policy) never deletes a chunk a copied backup
names.

` + exitCodesCopy,
		Example: "  flowbackup copy --from s3://my-bucket/flows/wc --to gs://dr-bucket/flows/wc\n  flowbackup copy --from file:///mnt/backups/wc --to s3://offsite/wc --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCopy(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.From, "from", "", "the location to copy: file:///path, s3://bucket/prefix or gs://bucket/prefix")
	f.StringVar(&o.To, "to", "", "the location to copy to (a missing file:// directory is created)")
	f.StringVar(&o.Flow, "flow", "", "copy only this flow (its name or uid)")
	f.BoolVar(&o.JSON, "json", false, "print the result as JSON (copied_objects, copied_bytes, skipped_objects, ...)")
	f.IntVar(&o.Workers, "workers", backup.DefaultWorkers, "chunks copied at once (within --memory)")
	addMemoryFlag(f, &o.Memory)
	human.DurationVar(f, &o.LockTTL, "lock-ttl", backup.DefaultLockTTL, "how long the destination's partition locks last if the copy dies holding them")
	f.BoolVar(&o.Checksum, "checksum", false, "also read what the destination already holds and compare it with the source, writing again what differs")
	addTrustedKeysFlag(f, &o.Trusted, "; here: leave backups signed by other keys out of the copy")
	addCheckRecipientsFlag(f, &o.Recipients)
	o.storageOptions.addFlags(f)
	return cmd
}

func runCopy(ctx context.Context, o copyOptions, out, errOut io.Writer) error {
	if o.From == "" || o.To == "" {
		return usagef("copy needs --from and --to (storage URLs)")
	}
	if o.From == o.To {
		return usagef("--from and --to are the same location (%s)", o.From)
	}
	if err := checkWorkersAndTTL(o.Workers, o.LockTTL); err != nil {
		return err
	}
	budget, err := useMemory(o.Memory, o.Memory/2, 400)
	if err != nil {
		return err
	}
	auth, _, err := loadAuth(o.Recipients, nil)
	if err != nil {
		return err
	}
	trusted, err := loadTrusted(o.Trusted)
	if err != nil {
		return err
	}
	from, err := o.open(ctx, o.From)
	if err != nil {
		return err
	}
	defer from.Close()
	uid, err := resolveFlow(ctx, from, o.Flow)
	if err != nil {
		return err
	}
	to, err := o.openDest(ctx, o.To)
	if err != nil {
		return err
	}
	defer to.Close()
	var progress backup.CopyProgress
	bar := newTransferBar(errOut, "copying")
	bar.run(func() (int64, int64, int64) {
		return progress.BytesDone.Load(), progress.BytesTotal.Load(), progress.Objects.Load()
	})
	res, err := backup.Copy(ctx, from, to, backup.CopyOptions{FlowUID: uid, Workers: o.Workers, Memory: budget, LockTTL: o.LockTTL,
		Checksum: o.Checksum, Trusted: trusted, Auth: auth, Progress: &progress})
	bar.finish()
	if errors.Is(err, backup.ErrSameLocation) {
		return usageError{err}
	}
	if res != nil {
		if o.JSON {
			if jerr := printJSON(out, res); jerr != nil {
				return jerr
			}
		} else {
			printCopy(out, res)
		}
	}
	if err != nil {
		return err
	}
	if n := len(res.NotCopied); n > 0 {
		return exitError{exitFailed, fmt.Errorf("%s not copied (see above)", human.Count(n, "backup"))}
	}
	return nil
}

func printCopy(out io.Writer, r *backup.CopyResult) {
	if r.ConfigCreated {
		fmt.Fprintf(out, "wrote %s's scheme (config.json) to %s\n", r.From, r.To)
	}
	fmt.Fprintf(out, "copied %s (%s, %s) from %s to %s; it already held %s (%s, %s)\n",
		human.Count(r.CopiedBackups, "backup"), human.Count(r.CopiedObjects, "object"), human.Bytes(r.CopiedBytes), r.From, r.To,
		human.Count(r.SkippedBackups, "backup"), human.Count(r.SkippedObjects, "object"), human.Bytes(r.SkippedBytes))
	if r.HealedChunks > 0 {
		fmt.Fprintf(out, "wrote again %s the destination held damaged, quarantined or of another size\n", human.Count(r.HealedChunks, "chunk"))
	}
	for _, n := range r.NotCopied {
		fmt.Fprintf(out, "not copied: %s (%s): %s\n", n.Key, n.Kind, n.Reason)
	}
}
