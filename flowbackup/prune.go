package flowbackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

type pruneOptions struct {
	From       string
	Keep       retentionFlags
	Grace      time.Duration
	LockTTL    time.Duration
	DryRun     bool
	JSON       bool
	Retire     []string
	SigningKey string
	Trusted    []string
	Recipients []string
	Identities []string
	storageOptions
}

func newPruneCommand() *cobra.Command {
	var o pruneOptions
	cmd := &cobra.Command{
		Use:   "prune --from URL --keep-last N [--keep-daily N ...] [--keep-within DUR] [--keep-tag TAG]",
		Short: "Delete old backups and unreferenced chunks, never what the newest restore needs",
		Long: `Delete backups that no retention rule keeps, except those the newest
restorable overlap needs; then delete chunks no kept backup names and older
than --grace. --dry-run says which rule keeps each backup.

` + retentionHelp + `

--retire-lineage ID (repeatable) first records that a lineage's machines are
gone (after a restore onto new machines while the old ones kept running: verify
reports the fork until then). A retired lineage is no longer restored unless
asked for (--lineage), its fork is no longer reported, and its backups are kept
only where retention or another lineage's newest restore needs them. With
--retire-lineage alone (no --keep-last), nothing is deleted.

Objects under an object lock (backup --object-lock) are never deleted: a
locked backup is kept (with its chunks) whatever the policy says, locked
chunks are skipped, and prune says how many objects, how many bytes and
until when; a prune after their locks end deletes them. In a versioned
bucket a delete leaves the object's older versions behind: the bucket's
lifecycle rule expires them (the Terraform modules set one).

Prune holds a lock that backups respect (it does not start while a backup
runs, and backups wait for it), and deletes nothing unless it could read
every manifest and latest pointer: an unreadable one could name any chunk.

In an encrypted location prune needs --recipients-file (the agent's) or
--identity-file: without either it cannot tell genuine backups from ones forged
by someone who can write to the bucket, and refuses (exit 3). Backups whose
index it cannot authenticate (forged, made for recipients not given, or by a
flowkeep older than authenticated indexes) are neither counted nor deleted:
prune says so; --identity-file authenticates the older ones by opening them.

` + exitCodesPrune,
		Example: "  flowbackup prune --from s3://my-bucket/flows/wc --keep-last 10 --keep-within 24h\n  flowbackup prune --from file:///mnt/backups/wc --keep-last 3 --dry-run",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPrune(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.From, "from", "", "backup URL")
	o.Keep.add(f, "")
	human.DurationVar(f, &o.Grace, "grace", backup.DefaultGrace, "never delete chunks younger than this (at least the lock TTL)")
	human.DurationVar(f, &o.LockTTL, "lock-ttl", backup.DefaultLockTTL, "how long the prune lock lasts if prune dies holding it (the backups' lock TTL; --grace must be at least this)")
	f.BoolVar(&o.DryRun, "dry-run", false, "say what would be deleted, delete nothing")
	f.StringArrayVar(&o.Retire, "retire-lineage", nil, "retire this lineage (id or unique prefix) first: its machines are gone (repeatable)")
	addTrustedKeysFlag(f, &o.Trusted, "")
	addCheckRecipientsFlag(f, &o.Recipients)
	addIdentityFlag(f, &o.Identities)
	addSigningKeyFlag(f, &o.SigningKey, "with --retire-lineage in a signed location: sign the retirement")
	f.BoolVar(&o.JSON, "json", false, "print the result as JSON")
	o.storageOptions.addFlags(f)
	return cmd
}

func runPrune(ctx context.Context, o pruneOptions, out io.Writer) error {
	policy, err := o.Keep.policy()
	if err != nil {
		return err
	}
	if policy.Empty() && len(o.Retire) == 0 {
		return usagef("give at least one retention rule (--keep-last, --keep-within, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly or --keep-tag): the newest backup of each partition is always kept")
	}
	s, err := o.open(ctx, o.From)
	if err != nil {
		return err
	}
	defer s.Close()
	signing, err := loadSigningKey(o.SigningKey)
	if err != nil {
		return err
	}
	trusted, err := loadTrusted(o.Trusted)
	if err != nil {
		return err
	}
	auth, keys, err := loadAuth(o.Recipients, o.Identities)
	if err != nil {
		return err
	}
	if policy.Empty() {
		return retireOnly(ctx, s, o, signing, backup.ReadPolicy{Trusted: trusted, RequireTrust: true, Auth: auth.With(keys.Auth()), Keys: keys, RequireAuth: true}, out)
	}
	po := backup.PruneOptions{Keep: policy, Grace: o.Grace, LockTTL: o.LockTTL, DryRun: o.DryRun, RetireLineages: o.Retire,
		SigningKey: signing, TrustedKeys: trusted, Auth: auth, Keys: keys}
	if err := po.Validate(); err != nil {
		return usageError{err}
	}
	res, err := backup.Prune(ctx, s, po)
	if errors.Is(err, backup.ErrNoSuchLineage) || errors.Is(err, backup.ErrRetireCurrent) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	for _, id := range res.Retired {
		fmt.Fprintf(out, "%s lineage %s\n", map[bool]string{false: "retired", true: "would retire"}[o.DryRun], id)
	}
	for _, ig := range res.Ignored {
		fmt.Fprintf(out, "ignored %s\n", ig)
	}
	if o.JSON {
		if err := printJSON(out, map[string]any{"dry_run": o.DryRun, "deleted_backups": append([]string{}, res.DeletedManifests...),
			"protected_backups": append([]string{}, res.Protected...), "deleted_chunks": res.DeletedChunks, "deleted_bytes": res.DeletedBytes,
			"kept_backups": res.KeptManifests, "swept_temporary_files": res.SweptTemp, "retired_lineages": append([]string{}, res.Retired...),
			"ignored": append([]string{}, res.Ignored...), "kept_by": res.Reasons, "held_chunks": res.HeldChunks, "held_bytes": res.HeldBytes, "held_until": res.HeldUntil,
			"locked_backups": append([]string{}, res.LockedManifests...), "locked_objects": res.LockedObjects, "locked_bytes": res.LockedBytes, "locked_until": res.LockedUntil,
			"unreadable_manifests": append([]string{}, res.Unreadable...), "chunk_sweep_skipped": res.NoChunkSweep}); err != nil {
			return err
		}
		return unreadableError(res)
	}
	verb := "deleted"
	if o.DryRun {
		verb = "would delete"
	}
	for _, k := range res.DeletedManifests {
		fmt.Fprintf(out, "%s %s\n", verb, k)
	}
	for _, k := range res.Protected {
		fmt.Fprintf(out, "kept %s: the newest restorable overlap needs it\n", k)
	}
	if o.DryRun {
		for _, k := range slices.Sorted(maps.Keys(res.Reasons)) {
			fmt.Fprintf(out, "would keep %s: %s\n", k, strings.Join(res.Reasons[k], ", "))
		}
	}
	fmt.Fprintf(out, "%s %s and %s (%s); kept %s\n", verb, human.Count(len(res.DeletedManifests), "backup"), human.Count(res.DeletedChunks, "chunk"), human.Bytes(res.DeletedBytes), human.Count(res.KeptManifests, "backup"))
	if res.HeldChunks > 0 {
		fmt.Fprintf(out, "held back %s (%s) no backup names, younger than --grace %v (a running backup may be about to name them): a prune after %s deletes them\n",
			human.Count(res.HeldChunks, "chunk"), human.Bytes(res.HeldBytes), o.Grace, res.HeldUntil.UTC().Format(time.RFC3339))
	}
	if res.SweptTemp > 0 {
		fmt.Fprintf(out, "removed %d temporary files that killed uploads left behind\n", res.SweptTemp)
	}
	printLocked(out, res)
	for _, u := range res.Unreadable {
		fmt.Fprintf(out, "unreadable %s\n", u)
	}
	return unreadableError(res)
}

// unreadableError says (exit 1) that prune deleted what its policy let go
// but skipped the chunk sweep, because some objects in manifests/ are not
// manifests it can read: they could name any chunk.
func unreadableError(res *backup.PruneResult) error {
	if !res.NoChunkSweep {
		return nil
	}
	return fmt.Errorf("%w: %s in %s could not be parsed or believed, so no chunk was deleted (the backups the policy lets go were); check them with verify, move them out of %s, then prune again",
		backup.ErrIncompleteView, human.Count(len(res.Unreadable), "object"), backup.ManifestsPrefix, backup.ManifestsPrefix)
}

// retireOnly retires lineages without pruning (--retire-lineage alone).
func retireOnly(ctx context.Context, s backup.Store, o pruneOptions, signing *backup.SigningKey, p backup.ReadPolicy, out io.Writer) error {
	cat, err := backup.LoadTrustedCatalog(ctx, s, p)
	if err != nil {
		return err
	}
	retired, err := backup.RetireNamed(ctx, s, cat, o.Retire, o.DryRun, time.Now(), signing, p.Trusted)
	if errors.Is(err, backup.ErrNoSuchLineage) || errors.Is(err, backup.ErrRetireCurrent) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	if o.JSON {
		return printJSON(out, map[string]any{"dry_run": o.DryRun, "retired_lineages": retired})
	}
	for _, id := range retired {
		fmt.Fprintf(out, "%s lineage %s\n", map[bool]string{false: "retired", true: "would retire"}[o.DryRun], id)
	}
	return nil
}
