package flowbackup

import (
	"context"
	"log/slog"
	"sync"

	"filippo.io/age"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/restore"
)

// The agent's second jobs: copies to other locations (--copy-to) and
// scheduled audits (--verify-schedule). Their flags and set-up live here,
// beside the agent subcommand (agent.go), which calls them.

// DefaultAuditSample is the percentage of the chunks a scheduled audit
// reads when --verify-sample is not given.
const DefaultAuditSample = 5.0

// agentJobsHelp is the agent --help text on copies and audits.
const agentJobsHelp = `--copy-to URL (repeatable) copies the backups of this agent's partitions to a
second location after each run that made a backup (or refreshed an idle
partition's heartbeat), after its retention: the same incremental copy as
flowbackup copy, beside the backups (a long copy delays none). A failed copy
fails no backup run: it is logged and counted, and the next run copies again.
The agent does not prune copies: run flowbackup prune --from URL there, with
its own policy. Metrics, labelled by to: flowkeep_copy_lag_seconds (how long
ago the oldest backup the copy lacks was taken; 0 when it holds them all),
flowkeep_copy_failures_total, flowkeep_copy_last_success_timestamp_seconds,
flowkeep_copy_copied_bytes_total, flowkeep_copy_copied_objects_total.

--verify-schedule SPEC audits the backup location on a schedule of its own (not
at start): a read-only flowbackup verify reading a random --verify-sample
percent of the chunks and checking their sha256 (100: every backup rebuilt, as
verify --deep). It never quarantines. In an encrypted location the agent holds
no identity to read chunks with: its audit checks every plaintext index against
--recipients-file, every chunk listed with its size, and reads the sample's
chunks whole (size, age header) without opening them; run verify --sample
--identity-file elsewhere to check their content. Metrics:
flowkeep_verify_last_success_timestamp_seconds (the last audit that found the
backups healthy), flowkeep_verify_last_run_timestamp_seconds,
flowkeep_verify_problems (what the last audit found; the log lists them),
flowkeep_verify_failures_total (audits that could not run),
flowkeep_verify_schedule_period_seconds and
flowkeep_verify_schedule_start_timestamp_seconds (for the alert that no audit
succeeded in two periods).`

// agentJobs are the flags of the agent's copies and audits.
type agentJobs struct {
	CopyTo         []string
	VerifySchedule string
	VerifySample   float64
}

func (j *agentJobs) addFlags(f *pflag.FlagSet) {
	f.StringSliceVar(&j.CopyTo, "copy-to", nil, "after each run, copy the new backups to this location too (repeatable; see flowbackup copy)")
	f.StringVar(&j.VerifySchedule, "verify-schedule", "", `audit the backups on this schedule: cron fields ("0 3 * * *") or "@every 24h"; read-only`)
	f.Float64Var(&j.VerifySample, "verify-sample", DefaultAuditSample, "with --verify-schedule: the percentage of the chunks each audit reads and checks (0 < P <= 100; 100: a full verify --deep)")
	// --sample, as verify and the issue name it, is the same setting.
	f.Float64Var(&j.VerifySample, "sample", DefaultAuditSample, "the same as --verify-sample")
	f.MarkHidden("sample")
}

// check refuses unusable settings before anything starts.
func (j *agentJobs) check(to string) error {
	for _, u := range j.CopyTo {
		if u == to {
			return usagef("--copy-to %s is the agent's own --to", u)
		}
	}
	if j.VerifySchedule != "" {
		if _, err := backup.ParseSchedule(j.VerifySchedule); err != nil {
			return usagef("--verify-schedule: %v", err)
		}
	}
	if j.VerifySample <= 0 || j.VerifySample > 100 {
		return usagef("--verify-sample must be a percentage above 0 and at most 100, got %g", j.VerifySample)
	}
	return nil
}

// copyTargets opens each --copy-to location and refuses one whose backups
// are of another scheme than the agent writes (exit 3); the returned
// function closes them.
func (j *agentJobs) copyTargets(ctx context.Context, so storageOptions, scheme backup.Scheme, co backup.CopyOptions) ([]*backup.CopyTarget, func(), error) {
	var out []*backup.CopyTarget
	closeAll := func() {
		for _, t := range out {
			t.Store.Close()
		}
	}
	for _, u := range j.CopyTo {
		s, err := so.openDest(ctx, u)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		out = append(out, &backup.CopyTarget{Store: s, Options: co})
		if err := backup.CheckCopyScheme(ctx, s, scheme); err != nil {
			closeAll()
			return nil, nil, err
		}
	}
	return out, closeAll, nil
}

// startAudits runs the scheduled audits of s until ctx ends; the returned
// function waits for them to stop.
func (j *agentJobs) startAudits(ctx context.Context, s backup.Store, reg prometheus.Registerer, log *slog.Logger, o restore.VerifyOptions) func() {
	if j.VerifySchedule == "" {
		return func() {}
	}
	sched, _ := backup.ParseSchedule(j.VerifySchedule)
	o.Sample = j.VerifySample
	a := &restore.Auditor{Store: s, Schedule: sched, Spec: j.VerifySchedule, Options: o, Metrics: restore.NewAuditMetrics(reg), Log: log}
	mode := "deep sample"
	if o.Keys == nil && o.Auth != nil {
		mode = "indexes authenticated, sampled chunks read whole (encrypted: no identity)"
	}
	a.Announce()
	log.Info("audits scheduled", "schedule", j.VerifySchedule, "sample_percent", j.VerifySample, "mode", mode)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.Run(ctx)
	}()
	return wg.Wait
}

// readerKeys are what the agent's copies and audits believe: its own
// signing key's signatures and --trusted-keys, and indexes tagged for its
// recipients.
func readerKeys(signing *backup.SigningKey, trusted *backup.TrustedKeys, recipients []age.Recipient) (*backup.TrustedKeys, *backup.IndexAuth, error) {
	if signing != nil {
		trusted = signing.Public().With(trusted)
	}
	auth, err := backup.NewIndexAuth(recipients, nil)
	if err != nil {
		return nil, nil, usageError{err}
	}
	return trusted, auth, nil
}
