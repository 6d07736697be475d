package flowbackup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/restore"
)

// agentOptions are the agent's settings (flags, FLOWBACKUP_* variables or
// the --config file).
type agentOptions struct {
	RecoveryDir string
	To          string
	Schedule    string
	MetricsAddr string
	Workers     int
	Memory      int64
	LockTTL     time.Duration
	Keep        retentionFlags
	Tags        []string
	LogFormat   string
	LogLevel    string
	Recipients  []string
	TakeOver    bool
	SigningKey  string
	Trusted     []string
	ObjectLock  string
	storageOptions
	agentJobs
}

func newAgentCommand() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:   "agent -r DIR --to URL --schedule SPEC",
		Short: "Back up DIR on a cron schedule, with Prometheus metrics",
		Long: `Run as a daemon: back up every partition in DIR now, then on every tick of the
schedule (five cron fields, or @every DURATION). A run still going when the
next tick comes makes that tick skip; a partition whose restorable range did
not move since its last backup is skipped (and counted). With any --keep-*
rule the agent prunes after each run, as flowbackup prune does (see its help
for the rules); --tag labels every backup it takes.
Settings come from flags, FLOWBACKUP_* variables or the --config file.

The schedule's longest gap must not exceed the flow's backup interval (flowrun
-b): otherwise backups of different partitions may not share a restorable
epoch. The agent warns loudly when it does, and exports
flowkeep_backup_schedule_exceeds_backup_interval.

Metrics (--metrics-addr), labelled by flow and partition:
flowkeep_backup_last_success_timestamp_seconds,
flowkeep_backup_last_attempt_timestamp_seconds, flowkeep_backup_restorable_epoch,
flowkeep_backup_rpo_seconds (age of the newest restorable point),
flowkeep_backup_uploaded_bytes_total, flowkeep_backup_uploaded_objects_total,
flowkeep_backup_skipped_objects_total, flowkeep_backup_skipped_total,
flowkeep_backup_duration_seconds (histogram), flowkeep_backup_failures_total;
labelled by flow: flowkeep_backup_fenced, flowkeep_backup_fork. The agent's
runs have their own series, partition="all": failures_total{partition="all"}
counts every failed run, including those that fail before any partition is
touched (a destination that cannot be reached, a recovery directory that
cannot be read), and last_attempt_timestamp_seconds{partition="all"} is the
end of the last run, whatever its outcome. Their flow label is empty until
the agent has read the flow's name from its partitions. A directory that
holds no partitions yet (a first boot) is not a failure.

` + objectLockHelp + ` With --object-lock the agent does not prune
(--keep-last is refused): its identity should have no right to delete
backups; run flowbackup prune under a separate identity (the Terraform
modules' prune identity).

` + fencingHelp + ` The agent claims the flow with --take-over once, at
its first run.

` + agentJobsHelp + `

` + exitCodesAgent,
		Example: "  flowbackup agent -r /var/lib/flowkeep --to s3://my-bucket/flows/wc --schedule '*/5 * * * *' --metrics-addr :9464\n  flowbackup agent --config /etc/flowkeep/flowbackup.yaml\n  flowbackup agent -r /var/lib/flowkeep --to s3://b/wc --schedule '@every 5m' --copy-to gs://dr/wc --verify-schedule '0 3 * * *' --verify-sample 5",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd.ErrOrStderr(), o.LogFormat, o.LogLevel)
			if err != nil {
				return err
			}
			return runAgent(cmd.Context(), o, log)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.RecoveryDir, "recovery-dir", "r", "", "the flow's recovery directory (as given to flowrun -r)")
	f.StringVar(&o.To, "to", "", "destination URL: file:///path (created if missing), s3://bucket/prefix or gs://bucket/prefix")
	f.StringVar(&o.Schedule, "schedule", "", `when to back up: cron fields ("*/5 * * * *") or "@every 5m"`)
	f.StringVar(&o.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at this address (e.g. :9464)")
	f.IntVar(&o.Workers, "workers", backup.DefaultWorkers, "chunks uploaded at once (within --memory)")
	addMemoryFlag(f, &o.Memory)
	human.DurationVar(f, &o.LockTTL, "lock-ttl", backup.DefaultLockTTL, "how long a partition lock lasts if the agent dies holding it")
	o.Keep.add(f, "after each run, prune to these rules (none: no pruning): ")
	addTagFlag(f, &o.Tags)
	f.StringVar(&o.LogFormat, "log-format", "text", "log as text or json")
	f.StringVar(&o.LogLevel, "log-level", "info", "least level logged: debug, info, warn or error")
	addRecipientsFlag(f, &o.Recipients)
	addTakeOverFlag(f, &o.TakeOver)
	addSigningKeyFlag(f, &o.SigningKey, "sign every manifest")
	addTrustedKeysFlag(f, &o.Trusted, "; here: other writers' keys, whose lineage claims the agent believes, and the keys its retention (prune) trusts")
	addObjectLockFlag(f, &o.ObjectLock)
	o.storageOptions.addFlags(f)
	o.agentJobs.addFlags(f)
	return cmd
}

// newLogger is the agent's structured logger.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	ho := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, usagef("--log-format %q: use text or json", format)
}

func runAgent(ctx context.Context, o agentOptions, log *slog.Logger) error {
	if o.RecoveryDir == "" {
		return usagef("the recovery directory is required (-r or recovery_dir)")
	}
	if o.Schedule == "" {
		return usagef(`a schedule is required (--schedule "*/5 * * * *" or "@every 5m")`)
	}
	sched, err := backup.ParseSchedule(o.Schedule)
	if err != nil {
		return usageError{err}
	}
	if err := checkWorkersAndTTL(o.Workers, o.LockTTL); err != nil {
		return err
	}
	// A chunk's compressed frames wait outside the heap (see
	// backup.ChunkSize): a quarter of the budget more keeps the heap to
	// the spools, buffers and SQLite's caches.
	budget, err := useMemory(o.Memory, o.Memory/4, 400)
	if err != nil {
		return err
	}
	if err := o.agentJobs.check(o.To); err != nil {
		return err
	}
	policy, err := o.Keep.policy()
	if err != nil {
		return err
	}
	if err := checkTags(o.Tags); err != nil {
		return err
	}
	lock, err := objectLock(o.ObjectLock)
	if err != nil {
		return err
	}
	if lock != nil && !policy.Empty() {
		return usagef("--object-lock with a --keep-* rule: an agent that locks its backups does not prune them; its identity should have no right to delete backups (the Terraform modules deny it). Run flowbackup prune on a schedule under the separate prune identity instead")
	}
	if gap := backup.MinGap(sched, time.Now()); gap < backup.ScheduleFloor {
		log.Warn("the schedule backs up more often than every "+backup.ScheduleFloor.String()+": each run lists and uploads; is that meant?", "schedule", o.Schedule, "shortest_gap", gap)
	}
	if st, err := os.Stat(o.RecoveryDir); err != nil || !st.IsDir() {
		return usagef("recovery directory %s does not exist", o.RecoveryDir)
	}
	recipients, err := loadRecipients(o.Recipients)
	if err != nil {
		return err
	}
	if err := notInside(o.To, o.RecoveryDir); err != nil {
		return err
	}
	signing, err := loadSigningKey(o.SigningKey)
	if err != nil {
		return err
	}
	trusted, err := loadTrusted(o.Trusted)
	if err != nil {
		return err
	}
	s, err := o.openDest(ctx, o.To)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := checkObjectLock(lock, s); err != nil {
		return err
	}
	// A location of the other scheme is a setup error: refuse to start.
	var auth *backup.IndexAuth
	if recipients != nil {
		if auth, err = backup.NewIndexAuth(recipients, nil); err != nil {
			return usageError{err}
		}
	}
	if err := backup.CheckLocation(ctx, s, auth, signing, trusted, time.Now()); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	metrics := backup.NewMetrics(reg)
	if o.MetricsAddr != "" {
		ln, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return usagef("metrics address %s: %v", o.MetricsAddr, err)
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		log.Info("serving metrics", "addr", ln.Addr().String())
	}
	a := &backup.Agent{Store: s, Dir: o.RecoveryDir, Schedule: sched, Spec: o.Schedule, Metrics: metrics, Log: log,
		Options: backup.Options{Workers: o.Workers, LockTTL: o.LockTTL, Memory: budget, Recipients: recipients, TakeOver: o.TakeOver, Tags: o.Tags,
			SigningKey: signing, TrustedKeys: trusted, ObjectLock: lock}}
	if !policy.Empty() {
		// The agent's retention trusts what it signs itself.
		var own *backup.TrustedKeys
		if signing != nil {
			own = signing.Public()
		}
		a.Retention = &backup.PruneOptions{Keep: policy, LockTTL: o.LockTTL, Grace: max(backup.DefaultGrace, o.LockTTL),
			SigningKey: signing, TrustedKeys: own.With(trusted)}
	}
	readTrusted, auth, err := readerKeys(signing, trusted, recipients)
	if err != nil {
		return err
	}
	scheme := backup.Scheme{Encrypted: recipients != nil, Signed: signing != nil, Known: true}
	targets, closeTargets, err := o.agentJobs.copyTargets(ctx, o.storageOptions, scheme,
		backup.CopyOptions{Workers: o.Workers, Memory: budget, LockTTL: o.LockTTL, Trusted: readTrusted, Auth: auth})
	if err != nil {
		return err
	}
	defer closeTargets()
	if len(targets) > 0 {
		a.CopyTo, a.CopyMetrics = targets, backup.NewCopyMetrics(reg)
		for _, t := range targets {
			a.CopyMetrics.Track(t)
		}
	}
	defer o.agentJobs.startAudits(ctx, s, reg, log, restore.VerifyOptions{Workers: o.Workers, Memory: o.Memory, Trusted: readTrusted, Auth: auth})()
	enc := "none"
	if recipients != nil {
		fp, _ := backup.RecipientsFingerprint(recipients)
		enc = fmt.Sprintf("age, %d recipients (set %s)", len(recipients), fp)
	}
	locking := "off"
	if lock != nil {
		locking = lock.String()
	}
	log.Info("agent started", "dir", o.RecoveryDir, "to", s.String(), "schedule", o.Schedule, "encryption", enc, "object_lock", locking, "copy_to", o.CopyTo)
	err = a.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}
