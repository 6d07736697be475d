package flowbackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

type restoreOptions struct {
	From       []string
	At         string
	To         string
	Partitions string
	ProcessID  int
	Processes  int
	Epoch      uint64
	Lineage    string
	Flow       string
	Force      bool
	DryRun     bool
	Workers    int
	Memory     int64
	Owner      string
	Mode       string
	TempDir    string
	IfEmpty    bool
	IfBackups  bool
	JSON       bool
	Identities []string
	Trusted    []string
	storageOptions
}

func newRestoreCommand() *cobra.Command {
	var o restoreOptions
	cmd := &cobra.Command{
		Use:   "restore --from URL [--from URL2 ...] --to DIR [--at TIME]",
		Short: "Restore the latest snapshot every partition's backups share into DIR",
		Long: `Choose the largest epoch that a usable backup of every partition contains, lay
those partitions into DIR (created if missing), and trim each to that epoch so
the next flowrun -r DIR resumes exactly there, with any number of workers.

Every object is checked against its sha256 while it downloads; a corrupt or
incomplete backup makes the restore fall back to the next best epoch, and say
so. Partitions appear in DIR only once all of them are complete; a restore
killed while it renames them into place is rolled back by the next restore
into DIR (with --if-empty too), which then restores. A DIR that already holds
partitions is refused unless --force (the old files are kept as
*.replaced-TIME). Nothing is ever written outside DIR, whatever a manifest says
(but for a private scratch directory, below).

On every boot (an init container, an ExecStartPre), --if-empty restores only
into a DIR without partitions, and --if-backups-exist only when the URL holds
backups; otherwise restore exits 0 and says why it did nothing.

A restore lays down one history (lineage) of the flow, never a mix: backups
of two partitions are combined at an epoch only where their lineages agree.
It picks the newest lineage (the one that last claimed the location) that every
partition can reach, says which, and starts a new lineage forked from it, so
the old machine, should it come back, cannot interleave its backups with the
new one's (its agent is fenced). --lineage ID restores another one.

--at TIME restores the state the flow was in at TIME (Litestream's
-timestamp, pgBackRest's --type=time): an RFC 3339 time or how long ago
(2h, 7d). That is the newest epoch that had closed by TIME, of the history
live then (a TIME before a restore forked the flow takes the old history's
backups). The manifests record when the ends of each backup's range closed;
once the images are fetched, each one's record of every epoch settles the
epoch exactly before anything is trimmed. Where not every partition's
backups cover that epoch, the newest one before it that they do is restored,
and the output says so. Nothing that old: exit 2, naming the oldest
restorable point (flowbackup list shows the window). --at and --epoch
exclude each other. A restore of some partitions (--partitions,
--process-id) settles the epoch from the manifests alone, so every machine
picks the same one.

--from is repeatable: copies of the backups in several locations
(flowbackup copy, or a plain copy of the objects) are planned over together,
each backup counted once, and each chunk is read from a location that holds
it whole, the next one when it is missing, damaged or unreachable, before
falling back to an older backup. A location that cannot be read is skipped
with a note while another serves; the output says what was read where.
Each location's own rules apply to it (signed, encrypted, strays). list and
verify read one location.

To restore a cluster onto several new machines, give each machine its share:
--partitions 0,1 on one and --partitions 2,3 on the other, or
--process-id I --processes P (partitions i with i mod P = I). Pin every machine
to one plan: run restore --dry-run --json once, then each machine with the
plan's --lineage and --epoch (a cluster whose machines restored different
lineages or epochs refuses to start, and says which).

When another user can change what names in DIR lead to (root restoring into
the service user's directory, with --owner), the restore does its SQLite work
(laying deltas, checks, trimming) in a private scratch directory under
--temp-dir, which then needs room for the images too, and copies each finished
file into DIR through descriptors; the scratch directory is removed, and a
killed restore's by the next one. A --temp-dir other users can change is
refused.

` + exitCodesRestore,
		Example: "  flowbackup restore --from s3://my-bucket/flows/wc --to /var/lib/flowkeep\n  flowbackup restore --from gs://bkt/wc --to /data/rec --partitions 2,3\n  flowbackup restore --from file:///mnt/backups/wc --to /tmp/rec --dry-run\n" +
			"  flowbackup restore --from s3://my-bucket/flows/wc --to /var/lib/flowkeep --at 2025-06-01T12:00:00Z\n  flowbackup restore --from s3://primary/wc --from gs://dr-copy/wc --to /var/lib/flowkeep --at 2h",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.ProcessID = -1
			if cmd.Flags().Changed("process-id") {
				o.ProcessID, _ = cmd.Flags().GetInt("process-id")
			}
			return runRestore(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.From, "from", nil, "backup URL: file:///path, s3://bucket/prefix or gs://bucket/prefix; repeatable: copies in several locations are read together")
	f.StringVar(&o.To, "to", "", "directory to lay the partitions into (becomes flowrun's -r)")
	f.StringVar(&o.Partitions, "partitions", "", "restore only these partitions, e.g. 0,2 or 0-3")
	f.Int("process-id", 0, "with --processes: restore the share of this machine (0-based)")
	f.IntVar(&o.Processes, "processes", 0, "number of machines sharing the partitions")
	f.Uint64Var(&o.Epoch, "epoch", 0, "restore this epoch instead of the latest one")
	f.StringVar(&o.At, "at", "", "restore the state the flow was in at this time: "+atHelp)
	f.StringVar(&o.Lineage, "lineage", "", "restore this lineage (an id or a unique prefix; flowbackup list shows them) instead of the newest one")
	f.StringVar(&o.Flow, "flow", "", "the flow's name or uid, when backups of several flows share the URL")
	f.BoolVar(&o.IfEmpty, "if-empty", false, "do nothing (exit 0) if DIR already holds partitions")
	f.BoolVar(&o.IfBackups, "if-backups-exist", false, "do nothing (exit 0) if the URL holds no backups yet (a first boot)")
	f.BoolVar(&o.JSON, "json", false, "print the result as JSON")
	f.BoolVar(&o.Force, "force", false, "replace partitions already in DIR (kept as *.replaced-TIME)")
	f.BoolVar(&o.DryRun, "dry-run", false, "print the plan; download and write nothing")
	f.IntVar(&o.Workers, "workers", 8, "objects downloaded at once per partition (within --memory)")
	addMemoryFlag(f, &o.Memory)
	f.StringVar(&o.Owner, "owner", "", "give the restored files to USER[:GROUP] (names or numbers), e.g. the flowrun service user when restoring as root")
	f.StringVar(&o.Mode, "mode", "0644", "permissions of the restored partition files (octal)")
	f.StringVar(&o.TempDir, "temp-dir", "", "where a restore into a directory other users can change (as root, with --owner) works on the images before it copies them in (default $TMPDIR)")
	addIdentityFlag(f, &o.Identities)
	addTrustedKeysFlag(f, &o.Trusted, "")
	o.storageOptions.addFlags(f)
	return cmd
}

func parsePartitions(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, usagef("--partitions %q: %q is not a partition number", s, part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, usagef("--partitions %q: %q is not a range", s, part)
			}
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}

func runRestore(ctx context.Context, o restoreOptions, out, errOut io.Writer) error {
	if o.To == "" && !o.DryRun {
		return usagef("--to DIR is required: where to lay the partitions")
	}
	if o.To != "" && !o.DryRun {
		if err := checkTarget(o.To); err != nil {
			return err
		}
	}
	if looksLikeURL(o.To) {
		return usagef("--to %q looks like a storage URL, not a directory: restore lays the partitions into --to DIR and reads the backups from --from URL (or FLOWBACKUP_URL); FLOWBACKUP_TO, if set for the agent, is a URL too", o.To)
	}
	if _, err := useMemory(o.Memory, o.Memory/2, 400); err != nil {
		return err
	}
	var at time.Time
	if o.At != "" {
		if o.Epoch > 0 {
			return usagef("--at and --epoch exclude each other: restore the state at a time, or an epoch")
		}
		var err error
		if at, err = parseAt(o.At, time.Now()); err != nil {
			return err
		}
	}
	note := func(msg string) { fmt.Fprintln(errOut, "flowbackup: "+msg) }
	ro := restore.Options{Plan: restore.PlanOptions{FlowUID: o.Flow, Epoch: o.Epoch, Lineage: o.Lineage, At: at}, Force: o.Force, DryRun: o.DryRun, Workers: o.Workers,
		Memory: o.Memory, Note: note}
	mode, err := strconv.ParseUint(o.Mode, 8, 32)
	if err != nil || mode > 0o777 || mode&0o600 != 0o600 {
		return usagef("--mode %q: give octal permissions that let the owner read and write, e.g. 0640", o.Mode)
	}
	ro.Mode = os.FileMode(mode)
	if o.TempDir != "" {
		if st, err := os.Stat(o.TempDir); err != nil || !st.IsDir() {
			return usagef("--temp-dir %s: not a directory (a restore into a directory other users can change works on the images there)", o.TempDir)
		}
		ro.TempDir = o.TempDir
	}
	if ro.Keys, err = loadKeys(o.Identities); err != nil {
		return err
	}
	if ro.Plan.Trusted, err = loadTrusted(o.Trusted); err != nil {
		return err
	}
	if o.Owner != "" {
		uid, gid, err := parseOwner(o.Owner)
		if err != nil {
			return err
		}
		ro = ro.WithOwner(uid, gid)
	}
	switch {
	case o.Partitions != "" && o.Processes > 0:
		return usagef("use --partitions or --process-id/--processes, not both")
	case o.Partitions != "":
		ps, err := parsePartitions(o.Partitions)
		if err != nil {
			return err
		}
		ro.Partitions = ps
	case o.Processes > 0:
		if o.ProcessID < 0 || o.ProcessID >= o.Processes {
			return usagef("--process-id must be in 0..%d", o.Processes-1)
		}
	case o.ProcessID >= 0:
		return usagef("--process-id needs --processes")
	}
	// Partitions a restore killed part-way through publishing left are not
	// a restored flow: this restore rolls them back and restores (looked at
	// first: opening them would make SQLite's files beside them).
	if o.IfEmpty && o.To != "" && !restore.InterruptedPublish(o.To) {
		n, err := partitionFiles(ctx, o.To)
		if err != nil {
			return err
		}
		if n > 0 {
			return o.nothing(out, fmt.Sprintf("%s already holds %d recovery partitions; nothing restored (--if-empty)", o.To, n))
		}
	}
	urls := splitLocations(o.From)
	stores, skipped, err := o.openLocations(ctx, urls)
	for _, n := range skipped {
		note(n)
	}
	if err != nil {
		return err
	}
	defer closeAll(stores)
	if o.IfBackups {
		any, err := hasBackupsIn(ctx, stores)
		if err != nil {
			return err
		}
		if !any {
			return o.nothing(out, fmt.Sprintf("%s holds no backups yet; nothing restored (--if-backups-exist)", strings.Join(urls, " and ")))
		}
	}
	if ro.Plan.FlowUID, err = resolveFlowIn(ctx, stores, o.Flow); err != nil {
		return err
	}
	if o.Processes > 0 {
		// The share depends on the partition count, which the plan knows.
		plan, err := restore.PlanFromAll(ctx, stores, ro.Plan, nil)
		if errors.Is(err, restore.ErrNotRestorable) {
			return exitError{exitNotRestorable, err}
		}
		if err != nil {
			return err
		}
		ro.Partitions = restore.PartitionsForProcess(o.ProcessID, o.Processes, plan.Count)
		if len(ro.Partitions) == 0 {
			fmt.Fprintf(out, "process %d of %d has no partitions to restore (the flow has %d)\n", o.ProcessID, o.Processes, plan.Count)
			return nil
		}
	}
	bar := newTransferBar(errOut, "restoring")
	var pc progressCounter
	ro.Progress = pc.update
	bar.run(pc.poll)
	began := time.Now()
	res, err := restore.RestoreFrom(ctx, stores, o.To, ro)
	bar.finish()
	if err != nil {
		if o.IfEmpty && errors.Is(err, restore.ErrOccupied) {
			// The partitions a killed --force restore had moved aside,
			// rolled back into place (see the --if-empty check above).
			return o.nothing(out, fmt.Sprintf("%s holds recovery partitions again, those an interrupted restore had moved aside; nothing restored (--if-empty)", o.To))
		}
		if errors.Is(err, restore.ErrNotRestorable) {
			return exitError{exitNotRestorable, err}
		}
		if errors.Is(err, restore.ErrAmbiguous) || errors.Is(err, restore.ErrOccupied) || errors.Is(err, restore.ErrNoSuchEpoch) || errors.Is(err, restore.ErrNoSuchLineage) ||
			errors.Is(err, restore.ErrNoSuchPartition) || errors.Is(err, restore.ErrUnsafeTempDir) || errors.Is(err, restore.ErrUnsafeTarget) {
			return usageError{err}
		}
		return err
	}
	res.Fallbacks = append(skipped, res.Fallbacks...)
	p := res.Plan
	if o.JSON {
		return printJSON(out, restoreJSON(res, o, time.Since(began)))
	}
	verb := "restored"
	if o.DryRun {
		verb = "would restore"
	}
	when := p.EpochTime.UTC().Format(time.RFC3339)
	if !p.EpochTimeExact {
		when = "closed at or before " + when
	}
	if p.At != nil && !p.At.Settled {
		fmt.Fprintf(out, "flow %s (%s): %s partitions %v of %d at epoch %d at most (%s)\n", p.Flow.Name, p.Flow.UID, verb, res.Restored, p.Count, p.Epoch, when)
	} else {
		fmt.Fprintf(out, "flow %s (%s): %s partitions %v of %d at epoch %d (%s)\n", p.Flow.Name, p.Flow.UID, verb, res.Restored, p.Count, p.Epoch, when)
	}
	if p.At != nil {
		fmt.Fprintf(out, "  %s\n", describeAt(p))
	}
	fmt.Fprintf(out, "  history: %s\n", p.Lineage.Describe())
	if !o.DryRun {
		fmt.Fprintf(out, "  the restored partitions start lineage %s, forked from it at epoch %d\n", res.Lineage.Short(), p.Epoch)
	}
	for _, i := range res.Restored {
		m := p.Chosen[i]
		fmt.Fprintf(out, "  partition %d: backup %s (epochs %d..%d, lineage %s, taken on %s)\n", i, m.ID, m.Epochs.Lo, m.Epochs.Hi, recovery.ShortID(m.LineageOf().ID), m.Agent.Host)
	}
	for _, f := range res.Fallbacks {
		fmt.Fprintf(out, "  fallback: %s\n", f)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(out, "  note: %s\n", n)
	}
	if len(urls) > 1 && !o.DryRun {
		var read []string
		for _, u := range stores {
			read = append(read, fmt.Sprintf("%s %s", u, human.Bytes(res.ReadFrom[u.String()])))
		}
		fmt.Fprintf(out, "  read chunks from: %s\n", strings.Join(read, ", "))
	}
	if !o.DryRun {
		iv := p.Chosen[res.Restored[0]].Intervals
		fmt.Fprintf(out, "downloaded %s (laid down %s) in %v; resume with: flowrun run %s -r %s -s %v -b %v and the same -i/-o (the output file, or a copy of it, and the input the flow read)\n",
			human.Bytes(res.Downloaded), human.Bytes(res.Bytes), time.Since(began).Round(time.Millisecond), p.Flow.Name, o.To,
			time.Duration(iv.SnapshotMs)*time.Millisecond, time.Duration(iv.BackupMs)*time.Millisecond)
	}
	return nil
}

// checkTarget refuses a restore target that cannot be a directory restore
// writes: an existing non-directory, or one whose nearest existing parent
// is not a writable directory (exit 3, before anything is read).
func checkTarget(dir string) error {
	p := filepath.Clean(dir)
	for {
		st, err := os.Stat(p)
		if err == nil {
			if !st.IsDir() {
				return usagef("--to %s: %s is not a directory", dir, p)
			}
			// Try it: permissions (which root passes) are not all that can
			// refuse (a read-only or virtual file system).
			if err := restore.ProbeWritable(p); errors.Is(err, restore.ErrUnsafeTarget) {
				return usageError{fmt.Errorf("--to %s: %w", dir, err)}
			} else if err != nil {
				return usagef("--to %s: cannot write in %s (%v): run the restore as a user who can, or as root with --owner", dir, p, err)
			}
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return usagef("--to %s: %v", dir, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return usagef("--to %s: no existing parent directory", dir)
		}
		p = parent
	}
}

// parseOwner parses USER[:GROUP], names or numbers; a missing group keeps
// the files' group (-1).
func parseOwner(s string) (int, int, error) {
	us, gs, hasGroup := strings.Cut(s, ":")
	uid, err := strconv.Atoi(us)
	if err != nil {
		u, lerr := user.Lookup(us)
		if lerr != nil {
			return 0, 0, usagef("--owner %q: no user %q", s, us)
		}
		uid, _ = strconv.Atoi(u.Uid)
	}
	gid := -1
	if hasGroup {
		if gid, err = strconv.Atoi(gs); err != nil {
			g, lerr := user.LookupGroup(gs)
			if lerr != nil {
				return 0, 0, usagef("--owner %q: no group %q", s, gs)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	return uid, gid, nil
}

// nothing reports a restore that had nothing to do.
func (o restoreOptions) nothing(out io.Writer, why string) error {
	if o.JSON {
		return printJSON(out, map[string]any{"restored": false, "reason": why})
	}
	fmt.Fprintln(out, why)
	return nil
}

// partitionFiles counts the recovery partitions in dir (found by content,
// as flowrun finds them; a missing dir holds none).
func partitionFiles(ctx context.Context, dir string) (int, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	ps, err := recovery.Find(ctx, dir, true)
	if err != nil {
		return 0, fmt.Errorf("look for partitions in %s: %w", dir, err)
	}
	recovery.CloseAll(ps)
	return len(ps), nil
}

// hasBackups says whether s holds any manifest.
func hasBackups(ctx context.Context, s backup.Store) (bool, error) {
	found := false
	err := s.List(ctx, backup.ManifestsPrefix, "", func(backup.ObjectInfo) error {
		found = true
		return errStopListing
	})
	if errors.Is(err, errStopListing) {
		err = nil
	}
	return found, err
}

var errStopListing = errors.New("stop")

type restoredPartition struct {
	Partition int    `json:"partition"`
	Backup    string `json:"backup"`
	Lo        uint64 `json:"lo"`
	Hi        uint64 `json:"hi"`
	Host      string `json:"host"`
	Lineage   string `json:"lineage"`
	Manifest  string `json:"manifest"`
}

func restoreJSON(res *restore.Result, o restoreOptions, took time.Duration) map[string]any {
	p := res.Plan
	parts := []restoredPartition{}
	for _, i := range res.Restored {
		m := p.Chosen[i]
		parts = append(parts, restoredPartition{i, m.ID, m.Epochs.Lo, m.Epochs.Hi, m.Agent.Host, m.LineageOf().ID,
			backup.ManifestKey(m.Flow.UID, m.Partition.Index, m.ID)})
	}
	out := map[string]any{
		"restored": !o.DryRun, "dry_run": o.DryRun, "flow": p.Flow.UID, "flow_name": p.Flow.Name, "partition_count": p.Count,
		"epoch": p.Epoch, "epoch_time": p.EpochTime.UTC(), "epoch_time_exact": p.EpochTimeExact, "partitions": parts, "fallbacks": append([]string{}, res.Fallbacks...),
		"downloaded_bytes": res.Downloaded, "written_bytes": res.Bytes, "seconds": took.Seconds(), "to": o.To,
		"lineage": p.Lineage.Lineage.ID, "lineage_info": p.Lineage, "notes": append([]string{}, p.Notes...),
		// What every machine of a cluster passes to restore the same plan.
		"pin": atPin(p),
	}
	if p.At != nil {
		out["at"] = p.At
	}
	if res.ReadFrom != nil {
		out["read_from"] = res.ReadFrom
	}
	if !o.DryRun {
		out["new_lineage"] = res.Lineage.ID
	}
	return out
}
