package flowbackup

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/restore"
)

type listOptions struct {
	From    string
	At      string
	JSON    bool
	Trusted []string
	// Recipients and Identities authenticate encrypted backups' indexes.
	Recipients []string
	Identities []string
	storageOptions
}

func newListCommand() *cobra.Command {
	var o listOptions
	cmd := &cobra.Command{
		Use:   "list --from URL [--at TIME]",
		Short: "List backups per flow and partition, with epochs and times",
		Long: `List every backup under URL: per flow and partition, each backup's id, kind
(base image, or delta over a base), restorable epoch range with wall times,
and stored size; then the newest epoch every partition's backups share, and
the restorable window: from the oldest state any live history's backups can
restore to the newest (restore --at reaches back that far).

--at TIME shows what restore --at TIME would use: the epoch, its history,
and each partition's backup. Where the manifests only bound the epoch (they
record when the ends of each backup's range closed), it says so: the
restore settles it from the images.

list reads one location (restore reads several: --from A --from B).

Exit codes:
  0  success
  1  failed
  2  with --at: no flow listed can be restored to that time (the window
     shows how far back the backups reach)
  3  usage or access error: bad flag, URL or config, missing bucket, bad
     credentials, an --at time in the future`,
		Example: "  flowbackup list --from s3://my-bucket/flows/wordcount\n  flowbackup list --from file:///mnt/backups/wc --json\n  flowbackup list --from s3://my-bucket/flows/wordcount --at 2h",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runList(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&o.From, "from", "", "backup URL: file:///path, s3://bucket/prefix or gs://bucket/prefix")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&o.At, "at", "", "show what a restore to this time would use: "+atHelp)
	addTrustedKeysFlag(cmd.Flags(), &o.Trusted, "; without it, list shows signed backups' signers unchecked")
	addCheckRecipientsFlag(cmd.Flags(), &o.Recipients)
	addIdentityFlag(cmd.Flags(), &o.Identities)
	o.storageOptions.addFlags(cmd.Flags())
	return cmd
}

type listEntry struct {
	Flow      string    `json:"flow"`
	FlowName  string    `json:"flow_name"`
	Partition int       `json:"partition"`
	Count     int       `json:"partition_count"`
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	Created   time.Time `json:"created"`
	Lo        uint64    `json:"lo"`
	Hi        uint64    `json:"hi"`
	LoTime    time.Time `json:"lo_time"`
	HiTime    time.Time `json:"hi_time"`
	Stored    int64     `json:"stored_bytes"`
	Size      int64     `json:"size_bytes"`
	Host      string    `json:"host"`
	Lineage   string    `json:"lineage"`
	// Encrypted backups show no size or host: only their plaintext index
	// is read (list needs no identity).
	Encrypted bool `json:"encrypted,omitempty"`
}

// listNewest is one partition's newest restorable epoch and how far it
// trails the partition whose backups are furthest ahead (backups of a
// cluster's hosts can lag unevenly, and a restore can only pick an epoch
// every partition has).
type listNewest struct {
	Partition     int       `json:"partition"`
	Epoch         uint64    `json:"epoch"`
	Time          time.Time `json:"time"`
	BehindEpochs  uint64    `json:"behind_epochs"`
	BehindSeconds float64   `json:"behind_seconds"`
}

type listFlow struct {
	UID           string       `json:"uid"`
	Name          string       `json:"name"`
	Partitions    int          `json:"partitions"`
	Backups       []listEntry  `json:"backups"`
	Newest        []listNewest `json:"newest_per_partition"`
	OverlapEpoch  uint64       `json:"overlap_epoch,omitempty"`
	OverlapTime   time.Time    `json:"overlap_time,omitempty"`
	NoOverlapNote string       `json:"no_overlap,omitempty"`
	// Lineages are the flow's histories, current first; OverlapLineage
	// the one a restore would lay down.
	Lineages       []backup.LineageSummary `json:"lineages"`
	OverlapLineage string                  `json:"overlap_lineage,omitempty"`
	Forks          []string                `json:"forks,omitempty"`
	// The restorable window: the oldest state any live history can
	// restore, and the newest restore.
	RestorableFrom      time.Time `json:"restorable_from,omitzero"`
	RestorableFromEpoch uint64    `json:"restorable_from_epoch,omitempty"`
	RestorableTo        time.Time `json:"restorable_to,omitzero"`
	RestorableToEpoch   uint64    `json:"restorable_to_epoch,omitempty"`
	// At is what a restore to --at would use; AtError why there is none.
	At      *listAt `json:"at,omitempty"`
	AtError string  `json:"at_error,omitempty"`
}

// listAt is what restore --at would lay down.
type listAt struct {
	Time           time.Time            `json:"time"`
	Epoch          uint64               `json:"epoch"`
	EpochTime      time.Time            `json:"epoch_time"`
	EpochTimeExact bool                 `json:"epoch_time_exact"`
	Lineage        string               `json:"lineage"`
	Point          *restore.PointInTime `json:"point"`
	Partitions     []restoredPartition  `json:"partitions"`
	Notes          []string             `json:"notes,omitempty"`
	Description    string               `json:"description"`
}

type listReport struct {
	From   string     `json:"from"`
	Flows  []listFlow `json:"flows"`
	Broken []string   `json:"broken,omitempty"`
	// Strays are backups list does not believe (untrusted or unsigned in
	// a signed location, plaintext in an encrypted one), and why.
	Strays []string `json:"strays,omitempty"`
	// Signed says the location holds signed backups; SignaturesChecked
	// that --trusted-keys was given.
	Signed            bool `json:"signed"`
	SignaturesChecked bool `json:"signatures_checked"`
	// Unauthenticated says the backups are encrypted and list had no key
	// to tell genuine ones from forged ones.
	Unauthenticated bool `json:"unauthenticated,omitempty"`
}

func runList(ctx context.Context, o listOptions, out io.Writer) error {
	var at time.Time
	if o.At != "" {
		var err error
		if at, err = parseAt(o.At, time.Now()); err != nil {
			return err
		}
	}
	s, err := o.open(ctx, o.From)
	if err != nil {
		return err
	}
	defer s.Close()
	trusted, err := loadTrusted(o.Trusted)
	if err != nil {
		return err
	}
	auth, keys, err := loadAuth(o.Recipients, o.Identities)
	if err != nil {
		return err
	}
	cat, err := backup.LoadTrustedCatalog(ctx, s, backup.ReadPolicy{Trusted: trusted, Auth: auth.With(keys.Auth()), Keys: keys})
	if err != nil {
		return err
	}
	rep := listReport{From: s.String(), Signed: cat.Location.Signed, SignaturesChecked: cat.Location.Trusted, Unauthenticated: cat.Location.Unauthenticated}
	for _, st := range cat.Strays {
		rep.Strays = append(rep.Strays, fmt.Sprintf("%s: %s", st.Key, st.Reason))
	}
	for _, b := range cat.Broken {
		rep.Broken = append(rep.Broken, fmt.Sprintf("%s: %v", b.Key, b.Err))
	}
	flows := cat.Flows()
	for _, uid := range slices.Sorted(maps.Keys(flows)) {
		ms := flows[uid]
		lf := listFlow{UID: uid, Name: ms[len(ms)-1].Flow.Name}
		for _, m := range ms {
			lf.Partitions = max(lf.Partitions, m.Partition.Count)
			kind := "base"
			size := m.Base.Size
			if m.Delta != nil {
				kind = "delta"
				size += m.Delta.Size
			}
			lf.Backups = append(lf.Backups, listEntry{Flow: uid, FlowName: m.Flow.Name, Partition: m.Partition.Index, Count: m.Partition.Count,
				ID: m.ID, Kind: kind, Created: m.Created, Lo: m.Epochs.Lo, Hi: m.Epochs.Hi, LoTime: m.Epochs.LoTime, HiTime: m.Epochs.HiTime,
				Stored: m.StoredBytes(), Size: size, Host: m.Agent.Host, Lineage: m.LineageOf().ID, Encrypted: m.Encryption != nil})
		}
		reg, err := backup.LoadRegistryWith(ctx, s, uid, cat.Policy(trusted))
		if err != nil {
			return err
		}
		lf.Lineages = backup.Lineages(ms, reg)
		lf.Newest = newestPerPartition(lf.Backups)
		if ov, ok := backup.PlanLineage(ms, lf.Partitions, reg, "", 0); ok {
			// How far each partition trails, within the history restores
			// use (another history's newer backups do not count).
			for _, sum := range lf.Lineages {
				if sum.Lineage.ID != ov.Lineage.ID {
					continue
				}
				var within []listEntry
				for i, m := range ms {
					if uint64(recovery.Agree(m.History(), sum.History())) >= m.Epochs.Hi {
						within = append(within, lf.Backups[i])
					}
				}
				lf.Newest = newestPerPartition(within)
			}
			lf.OverlapEpoch = ov.Epoch
			lf.OverlapTime = restore.OverlapTime(ov) // as verify and restore say it
			lf.OverlapLineage = ov.Lineage.ID
			for _, f := range backup.Forks(lf.Lineages) {
				lf.Forks = append(lf.Forks, restore.ForkMessage(lf.Name, f, ov.Lineage.ID))
			}
		} else {
			lf.NoOverlapNote = "no epoch is covered by a backup of every partition"
		}
		po := restore.PlanOptions{FlowUID: uid, Registry: reg}
		if w, err := restore.RestorableWindow(ms, po); err == nil {
			lf.RestorableFrom, lf.RestorableFromEpoch = w.From.Time, w.From.Epoch
			lf.RestorableTo, lf.RestorableToEpoch = w.To.Time, w.To.Epoch
		}
		if !at.IsZero() {
			po.At = at
			if p, err := restore.MakePlan(ms, po); err != nil {
				lf.AtError = err.Error()
			} else {
				lf.At = &listAt{Time: at, Epoch: p.Epoch, EpochTime: p.EpochTime, EpochTimeExact: p.EpochTimeExact, Lineage: p.Lineage.Lineage.ID,
					Point: p.At, Notes: p.Notes, Description: describeAt(p), Partitions: []restoredPartition{}}
				for i, m := range p.Chosen {
					lf.At.Partitions = append(lf.At.Partitions, restoredPartition{i, m.ID, m.Epochs.Lo, m.Epochs.Hi, m.Agent.Host, m.LineageOf().ID,
						backup.ManifestKey(m.Flow.UID, m.Partition.Index, m.ID)})
				}
			}
		}
		rep.Flows = append(rep.Flows, lf)
	}
	// With --at, exit 2 when no flow listed can be restored to the time.
	var atErr error
	if !at.IsZero() {
		atErr = exitError{exitNotRestorable, fmt.Errorf("no flow here can be restored to %s", fmtTime(at))}
		for _, lf := range rep.Flows {
			if lf.At != nil {
				atErr = nil
			}
		}
	}
	if o.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
		return atErr
	}
	if len(rep.Flows) == 0 {
		fmt.Fprintf(out, "no backups in %s\n", rep.From)
	}
	for _, lf := range rep.Flows {
		name := lf.Name
		if name == "" {
			name = "(name sealed)"
		}
		fmt.Fprintf(out, "flow %s (%s), %s\n", name, lf.UID, human.Count(lf.Partitions, "partition"))
		fmt.Fprintf(out, "  %-8s %-29s  %-5s  %s  (%s .. %s)  %s  %s\n", "PART", "BACKUP", "KIND", "EPOCHS", "FROM", "TO", "STORED", "LINEAGE")
		for _, e := range lf.Backups {
			enc := ""
			if e.Encrypted {
				enc = "  encrypted"
			}
			fmt.Fprintf(out, "  part %-3d %s  %-5s  epochs %d..%d  (%s .. %s)  %s  lineage %s%s\n", e.Partition, e.ID, e.Kind, e.Lo, e.Hi,
				e.LoTime.UTC().Format(time.RFC3339), e.HiTime.UTC().Format(time.RFC3339), human.Bytes(e.Stored), recovery.ShortID(e.Lineage), enc)
		}
		printLineageTree(out, lf)
		fmt.Fprintln(out, "  newest restorable epoch per partition:")
		for _, n := range lf.Newest {
			behind := ""
			if n.BehindEpochs > 0 {
				behind = fmt.Sprintf("  %s (%s) behind the newest", human.Count(n.BehindEpochs, "epoch"),
					time.Duration(n.BehindSeconds*float64(time.Second)).Round(time.Second))
			}
			fmt.Fprintf(out, "    part %-3d epoch %d (%s)%s\n", n.Partition, n.Epoch, n.Time.UTC().Format(time.RFC3339), behind)
		}
		if lf.OverlapEpoch > 0 {
			fmt.Fprintf(out, "  restorable to epoch %d (%s), lineage %s\n", lf.OverlapEpoch, lf.OverlapTime.UTC().Format(time.RFC3339), recovery.ShortID(lf.OverlapLineage))
			fmt.Fprintf(out, "  restorable window: from epoch %d (%s) to epoch %d (%s)\n", lf.RestorableFromEpoch, fmtTime(lf.RestorableFrom), lf.RestorableToEpoch, fmtTime(lf.RestorableTo))
		} else {
			fmt.Fprintf(out, "  not restorable: %s\n", lf.NoOverlapNote)
		}
		if a := lf.At; a != nil {
			fmt.Fprintf(out, "  a restore to %s would use epoch %d of lineage %s:\n", fmtMilli(a.Time), a.Epoch, recovery.ShortID(a.Lineage))
			fmt.Fprintf(out, "    %s\n", a.Description)
			for _, pp := range a.Partitions {
				fmt.Fprintf(out, "    part %-3d backup %s (epochs %d..%d)\n", pp.Partition, pp.Backup, pp.Lo, pp.Hi)
			}
			for _, n := range a.Notes {
				fmt.Fprintf(out, "    note: %s\n", n)
			}
		} else if lf.AtError != "" {
			fmt.Fprintf(out, "  a restore to %s: %s\n", fmtMilli(at), lf.AtError)
		}
		for _, f := range lf.Forks {
			fmt.Fprintf(out, "  FORK: %s\n", f)
		}
	}
	for _, b := range rep.Broken {
		fmt.Fprintf(out, "broken: %s\n", b)
	}
	for _, b := range rep.Strays {
		fmt.Fprintf(out, "not believed: %s\n", b)
	}
	if rep.Signed && !rep.SignaturesChecked {
		fmt.Fprintln(out, "the backups here are signed; their signatures were not checked (give --trusted-keys)")
	}
	if rep.Unauthenticated {
		fmt.Fprintln(out, "the backups here are encrypted; their plaintext indexes were not authenticated (give --recipients-file or --identity-file)")
	}
	return atErr
}

// newestPerPartition is each partition's newest restorable epoch and its lag
// behind the newest of all partitions.
func newestPerPartition(bs []listEntry) []listNewest {
	by := map[int]listNewest{}
	var top listNewest
	for _, e := range bs {
		if n, ok := by[e.Partition]; !ok || e.Hi > n.Epoch {
			by[e.Partition] = listNewest{Partition: e.Partition, Epoch: e.Hi, Time: e.HiTime}
		}
		if e.Hi > top.Epoch {
			top = listNewest{Epoch: e.Hi, Time: e.HiTime}
		}
	}
	var out []listNewest
	for _, i := range slices.Sorted(maps.Keys(by)) {
		n := by[i]
		n.BehindEpochs = top.Epoch - n.Epoch
		if n.BehindEpochs > 0 && !top.Time.IsZero() && !n.Time.IsZero() {
			n.BehindSeconds = max(0, top.Time.Sub(n.Time).Seconds())
		}
		out = append(out, n)
	}
	return out
}

// printLineageTree draws a flow's lineages as a tree: each under the one it
// forked from, with its host, fork epoch, time span and state.
func printLineageTree(out io.Writer, lf listFlow) {
	fmt.Fprintln(out, "  lineages (histories), each under the one it forked from:")
	known := map[string]bool{}
	for _, s := range lf.Lineages {
		known[s.Lineage.ID] = true
	}
	children := map[string][]backup.LineageSummary{}
	var roots []backup.LineageSummary
	for _, s := range lf.Lineages {
		// A lineage hangs under its nearest ancestor that has backups here.
		parent := ""
		for _, a := range s.Lineage.Ancestors {
			if known[a.ID] {
				parent = a.ID
				break
			}
		}
		if parent == "" {
			roots = append(roots, s)
		} else {
			children[parent] = append(children[parent], s)
		}
	}
	var walk func(s backup.LineageSummary, depth int)
	walk = func(s backup.LineageSummary, depth int) {
		var state []string
		if s.Lineage.ID == lf.OverlapLineage {
			state = append(state, "restores use it")
		}
		if !s.Fenced.IsZero() {
			state = append(state, "fenced at "+s.Fenced.UTC().Format(time.RFC3339))
		}
		if s.Retired {
			state = append(state, "retired")
		}
		how := s.Lineage.Reason
		if s.Lineage.Parent() != "" {
			how = fmt.Sprintf("%s at epoch %d", s.Lineage.Reason, s.Lineage.Fork)
		}
		hosts := strings.Join(s.Hosts, ",")
		if hosts == "" {
			hosts = s.Lineage.Host
		}
		line := fmt.Sprintf("%s- %s  host %s  %s  created %s  %s %s .. %s", strings.Repeat("  ", depth+2), s.Lineage.Short(), hosts, how,
			fmtTime(s.Lineage.Created), human.Count(s.Backups, "backup"), fmtTime(s.First), fmtTime(s.Last))
		if len(state) > 0 {
			line += "  [" + strings.Join(state, "; ") + "]"
		}
		fmt.Fprintln(out, line)
		for _, c := range children[s.Lineage.ID] {
			walk(c, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return t.UTC().Format(time.RFC3339)
}
