package flowbackup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/flowkeep/flowkeep/backup"
)

// agentOptions are the agent's settings, from flags or a YAML file.
type agentOptions struct {
	RecoveryDir string
	To          string
	Schedule    string
	MetricsAddr string
	Workers     int
	LockTTL     time.Duration
	storageOptions
}

// agentFile is the YAML form of agentOptions.
type agentFile struct {
	RecoveryDir string        `yaml:"recovery_dir"`
	To          string        `yaml:"to"`
	Schedule    string        `yaml:"schedule"`
	MetricsAddr string        `yaml:"metrics_addr"`
	Workers     int           `yaml:"workers"`
	LockTTL     time.Duration `yaml:"lock_ttl"`
	S3          struct {
		Endpoint  string `yaml:"endpoint"`
		Region    string `yaml:"region"`
		PathStyle bool   `yaml:"path_style"`
		SSE       string `yaml:"sse"`
		KMSKeyID  string `yaml:"kms_key_id"`
	} `yaml:"s3"`
}

// merge fills every setting not given on the command line from the file.
func (o *agentOptions) merge(file agentFile, flags *pflag.FlagSet) {
	str := func(flag string, dst *string, v string) {
		if !flags.Changed(flag) && v != "" {
			*dst = v
		}
	}
	str("recovery-dir", &o.RecoveryDir, file.RecoveryDir)
	str("to", &o.To, file.To)
	str("schedule", &o.Schedule, file.Schedule)
	str("metrics-addr", &o.MetricsAddr, file.MetricsAddr)
	str("s3-endpoint", &o.S3Endpoint, file.S3.Endpoint)
	str("s3-region", &o.S3Region, file.S3.Region)
	str("s3-sse", &o.S3SSE, file.S3.SSE)
	str("s3-sse-kms-key-id", &o.S3KMSKeyID, file.S3.KMSKeyID)
	if !flags.Changed("workers") && file.Workers > 0 {
		o.Workers = file.Workers
	}
	if !flags.Changed("lock-ttl") && file.LockTTL > 0 {
		o.LockTTL = file.LockTTL
	}
	if !flags.Changed("s3-path-style") && file.S3.PathStyle {
		o.S3PathStyle = true
	}
}

const agentConfigExample = `# flowbackup agent --config agent.yaml
recovery_dir: /var/lib/flowkeep
to: s3://my-bucket/flows/wordcount
schedule: "*/5 * * * *"     # or "@every 5m"
metrics_addr: ":9464"
lock_ttl: 15m
s3:
  region: eu-west-1
  sse: aws:kms`

func newAgentCommand() *cobra.Command {
	var o agentOptions
	var config string
	cmd := &cobra.Command{
		Use:   "agent -r DIR --to URL --schedule SPEC",
		Short: "Back up DIR on a cron schedule, with Prometheus metrics",
		Long: `Run as a daemon: back up every partition in DIR now, then on every tick of the
schedule (five cron fields, or @every DURATION). A run still going when the
next tick comes makes that tick skip. Settings come from flags or a YAML file
(--config); flags given on the command line win.

The schedule's longest gap must not exceed the flow's backup interval (flowrun
-b): otherwise backups of different partitions may not share a restorable
epoch. The agent warns loudly when it does, and exports
flowkeep_backup_schedule_exceeds_backup_interval.

Metrics (--metrics-addr): flowkeep_backup_last_success_timestamp_seconds,
flowkeep_backup_restorable_epoch, flowkeep_backup_uploaded_bytes_total,
flowkeep_backup_uploaded_objects_total, flowkeep_backup_skipped_objects_total,
flowkeep_backup_duration_seconds, flowkeep_backup_failures_total, per partition.

Config file:
` + agentConfigExample + `

` + exitCodesHelp,
		Example: "  flowbackup agent -r /var/lib/flowkeep --to s3://my-bucket/flows/wc --schedule '*/5 * * * *' --metrics-addr :9464\n  flowbackup agent --config /etc/flowkeep/agent.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config != "" {
				file, err := loadAgentConfig(config)
				if err != nil {
					return err
				}
				o.merge(file, cmd.Flags())
			}
			return runAgent(cmd.Context(), o, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
		},
	}
	f := cmd.Flags()
	f.StringVar(&config, "config", "", "YAML file with the agent's settings (see above)")
	f.StringVarP(&o.RecoveryDir, "recovery-dir", "r", "", "the flow's recovery directory (as given to flowrun -r)")
	f.StringVar(&o.To, "to", "", "destination URL: file:///path, s3://bucket/prefix or gs://bucket/prefix")
	f.StringVar(&o.Schedule, "schedule", "", `when to back up: cron fields ("*/5 * * * *") or "@every 5m"`)
	f.StringVar(&o.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at this address (e.g. :9464)")
	f.IntVar(&o.Workers, "workers", 8, "chunks uploaded at once")
	f.DurationVar(&o.LockTTL, "lock-ttl", 15*time.Minute, "how long a partition lock lasts if the agent dies holding it")
	o.storageOptions.addFlags(f)
	return cmd
}

func loadAgentConfig(path string) (agentFile, error) {
	var file agentFile
	b, err := os.ReadFile(path)
	if err != nil {
		return file, usagef("read config: %v", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		return file, usagef("config %s: %v", path, err)
	}
	return file, nil
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
	if st, err := os.Stat(o.RecoveryDir); err != nil || !st.IsDir() {
		return usagef("recovery directory %s does not exist", o.RecoveryDir)
	}
	s, err := o.open(ctx, o.To)
	if err != nil {
		return err
	}
	defer s.Close()
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
		Options: backup.Options{Workers: o.Workers, LockTTL: o.LockTTL}}
	log.Info("agent started", "dir", o.RecoveryDir, "to", s.String(), "schedule", o.Schedule)
	err = a.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}
