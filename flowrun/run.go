package flowrun

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/recovery"
	"github.com/flowkeep/flowkeep/recovery/clustered"
	"github.com/flowkeep/flowkeep/recovery/local"
)

type runOptions struct {
	Flow         string
	Workers      int
	Snapshot     time.Duration
	Backup       time.Duration
	snapshotSet  bool
	backupSet    bool
	RecoveryDirs []string
	InitParts    int
	ProcessID    int
	Addresses    []string
	SnapshotBuf  string
	snapBufSet   bool
	StateMemory  string
	stateMemSet  bool
	Listen       string
	ConnTimeout  time.Duration
	Secret       string
	SecretFile   string
	Cert, Key    string
	CA           string
	FlowOptions
}

func newRunCommand(specs []FlowSpec) *cobra.Command {
	var o runOptions
	var examples []string
	for _, s := range specs {
		if s.Example != "" {
			examples = append(examples, s.Example)
		}
	}
	cmd := &cobra.Command{
		Use:   "run FLOW [flags]",
		Short: "Run a flow (" + flowNames(specs) + ")",
		Long: `Run a registered flow until its input ends.

Without -r the run keeps no state between runs. With -r DIR the flow snapshots
into the recovery partitions in DIR (create them with 'flowrun recovery init',
or with --init-partitions N on the first run) every snapshot interval (-s),
resumes from the latest consistent snapshot when run again on the same DIR
(with any -w), and continues after end of input: a later run over an appended
input file reads only what was appended.

The backup interval (-b) is how far apart backups of different partitions may
be taken and still restore together: old snapshots are kept that long. Use -b 0
if you do not back up the partitions.

To run one flow as a cluster of P processes, start each with the same flags
and --addresses host0:port,…,host(P-1):port, plus its own --process-id; every
process keeps its recovery partitions in its own -r directory (the cluster
must reach every partition). Every flag can also be set as FLOWRUN_<FLAG>,
e.g. FLOWRUN_PROCESS_ID=2, FLOWRUN_ADDRESSES=…, FLOWRUN_RECOVERY_DIR=….

--init-partitions N makes a first start create N partitions when the
recovery directories hold none, and is a no-op on every later start, so a
service can always pass it: run the restore step (flowbackup restore
--if-empty --if-backups-exist) before it, so a replaced machine restores
instead. Partitions that exist must be N, or the run is refused. In a cluster
every process is given the same N; the processes agree on one new flow and
each creates its share (partition i on process i mod P, as restore's
--process-id/--processes lays them down).

Flows: ` + flowNames(specs) + `

` + exitCodesHelp,
		Example: strings.Join(examples, "\n"),
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 1:
				o.Flow = args[0]
			case len(specs) == 1:
				o.Flow = specs[0].Name
			default:
				return usagef("name the flow to run: one of %s", flowNames(specs))
			}
			if err := flagsFromEnv(cmd.Flags()); err != nil {
				return err
			}
			o.snapshotSet = cmd.Flags().Changed("snapshot-interval")
			o.backupSet = cmd.Flags().Changed("backup-interval")
			o.snapBufSet = cmd.Flags().Changed("snapshot-buffer")
			o.stateMemSet = cmd.Flags().Changed("state-memory")
			return runRun(cmd.Context(), o, specs, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.IntVarP(&o.Workers, "workers", "w", 1, "number of workers; keys are spread over them (e.g. -w 4)")
	f.VarP(human.Duration{D: &o.Snapshot}, "snapshot-interval", "s", "how often to close an epoch and snapshot changed state: seconds or a duration (e.g. -s 10 or -s 10s); required with -r")
	f.VarP(human.Duration{D: &o.Backup}, "backup-interval", "b", "keep snapshots this long so partition backups taken this far apart still restore together: seconds or a duration (e.g. -b 300 or -b 5m, or -b 0); required with -r")
	f.StringSliceVarP(&o.RecoveryDirs, "recovery-dir", "r", nil, "directory of recovery partitions (e.g. -r /var/lib/flowkeep); repeat it (or separate with commas) when they are spread over several directories; without it the run keeps no state")
	f.IntVar(&o.InitParts, "init-partitions", 0, "on a first start, create this many recovery partitions when the -r directories hold none (e.g. --init-partitions 4); partitions that exist must be this many")
	f.StringVarP(&o.Input, "input", "i", "", "input file, directory (one partition per file), - for stdin, or kafka://BROKERS/TOPICS[?start=earliest|latest|TIME&tail=true&group=NAME] (e.g. --input access.log)")
	f.StringVarP(&o.Output, "output", "o", "", "output file, - for stdout, or kafka://BROKERS/TOPIC[?exactly_once=true] (e.g. --output counts.csv)")
	f.BoolVar(&o.Overwrite, "overwrite", false, "let a fresh run replace an existing non-empty output file")
	human.DurationVar(f, &o.Window, "window", time.Minute, "logstats: tumbling window size (e.g. --window 5m)")
	human.DurationVar(f, &o.Lateness, "lateness", 0, "logstats: how late a line may be and still count in its window (e.g. --lateness 30s)")
	f.StringVar(&o.SnapshotBuf, "snapshot-buffer", "256MiB", "how much snapshot data may wait to be written to the recovery partitions (e.g. 64MiB); beyond it the flow waits, and epochs stretch while snapshots are behind")
	f.StringVar(&o.StateMemory, "state-memory", "", "bound the memory keyed state may use (e.g. --state-memory 512MiB; needs -r; in a cluster give every process one): keys beyond it stay in the recovery partitions and are read back when an item needs them. Eviction: a key leaves memory only once its state is durable in its partition, in clock (second-chance) order, so keys touched since the clock last passed them stay; when clean keys are not enough, the keys changed longest ago are written early. Without it all state a run touches stays in memory")
	f.IntVar(&o.ProcessID, "process-id", 0, "this process's index into --addresses when the flow runs as several processes (e.g. --process-id 1)")
	f.StringSliceVar(&o.Addresses, "addresses", nil, "host:port of every process of the cluster, in process order; each listens on its own (e.g. --addresses 10.0.0.1:7400,10.0.0.2:7400)")
	f.StringVar(&o.Listen, "listen", "", "address this process listens on for its peers (default: its own --addresses entry), e.g. --listen :7400 behind NAT or a Kubernetes Service")
	human.DurationVar(f, &o.ConnTimeout, "connect-timeout", time.Minute, "how long to wait for every process of the cluster to connect at start-up: seconds or a duration")
	f.StringVar(&o.Secret, "cluster-secret", "", "a secret shared by every process of the cluster: each connection proves both ends hold it, strangers are refused, and every frame is authenticated and encrypted (prefer FLOWRUN_CLUSTER_SECRET or --cluster-secret-file: a flag shows in ps)")
	f.StringVar(&o.SecretFile, "cluster-secret-file", "", "read --cluster-secret from this file (e.g. a mounted Kubernetes Secret)")
	f.StringVar(&o.Cert, "cluster-cert", "", "PEM certificate of this process: run the cluster's connections over mutual TLS (with --cluster-key and --cluster-ca)")
	f.StringVar(&o.Key, "cluster-key", "", "PEM private key of --cluster-cert")
	f.StringVar(&o.CA, "cluster-ca", "", "PEM certificate(s) of the CA that signs every process's --cluster-cert")
	return cmd
}

// flagsFromEnv sets every flag not given on the command line from
// FLOWRUN_<NAME> (dashes as underscores), e.g. FLOWRUN_PROCESS_ID=1: handy in
// containers.
func flagsFromEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := "FLOWRUN_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = usagef("%s=%q: %v", name, v, serr)
			}
		}
	})
	return err
}

// minStateMemory is the smallest --state-memory: below it the cache holds
// too little to be worth its bookkeeping.
const minStateMemory = 4 << 20

// The longest intervals run accepts: beyond them a typo (-s 1000000h) is
// likelier than a wish.
const (
	maxSnapshotInterval = 24 * time.Hour
	maxBackupInterval   = 31 * 24 * time.Hour
)

func (o runOptions) validate() error {
	if o.Workers < 1 {
		return usagef("-w must be at least 1, got %d", o.Workers)
	}
	if o.snapshotSet && o.Snapshot <= 0 {
		return usagef("-s must be positive, got %v", o.Snapshot)
	}
	if o.Snapshot > maxSnapshotInterval {
		return usagef("-s %v is longer than %v: a crash would lose that much progress; snapshot more often", o.Snapshot, maxSnapshotInterval)
	}
	if o.Backup < 0 {
		return usagef("-b must not be negative, got %v", o.Backup)
	}
	if o.Backup > maxBackupInterval {
		return usagef("-b %v is longer than %v: every snapshot would be kept that long; back up more often", o.Backup, maxBackupInterval)
	}
	if len(o.RecoveryDirs) > 0 && (!o.snapshotSet || !o.backupSet) {
		var missing []string
		if !o.snapshotSet {
			missing = append(missing, "the snapshot interval (e.g. -s 10s)")
		}
		if !o.backupSet {
			missing = append(missing, "the backup interval (e.g. -b 5m, or -b 0 if you do not back up the partitions)")
		}
		return usagef("-r needs %s", strings.Join(missing, " and "))
	}
	if n, err := human.ParseBytes(o.SnapshotBuf); err != nil || n < 1<<20 {
		return usagef("--snapshot-buffer %q: give a size of at least 1MiB (e.g. 256MiB)", o.SnapshotBuf)
	}
	if o.stateMemSet || o.StateMemory != "" {
		n, err := human.ParseBytes(o.StateMemory)
		switch {
		case strings.TrimSpace(o.StateMemory) == "":
			return usagef("--state-memory %q: give a size (e.g. 512MiB), or leave the flag out to keep all state in memory", o.StateMemory)
		case errors.Is(err, human.ErrTooLarge):
			return usagef("--state-memory %q: too large: give the memory keyed state may use (e.g. 512MiB, 16GiB)", o.StateMemory)
		case errors.Is(err, human.ErrNotWhole):
			return usagef("--state-memory %q: give a whole number, in a smaller unit if need be (e.g. 1536MiB, not 1.5GiB)", o.StateMemory)
		case err != nil:
			return usagef("--state-memory %q: give a size, a whole number with a unit (e.g. 512MiB)", o.StateMemory)
		case n < minStateMemory:
			return usagef("--state-memory %q: give a size of at least %s (e.g. 512MiB)", o.StateMemory, human.Bytes(minStateMemory))
		}
		if len(o.RecoveryDirs) == 0 {
			return usagef("--state-memory needs -r: state that does not fit in memory is kept in the recovery partitions")
		}
	}
	if o.InitParts < 0 {
		return usagef("--init-partitions must not be negative, got %d", o.InitParts)
	}
	if o.InitParts > 0 && len(o.RecoveryDirs) == 0 {
		return usagef("--init-partitions needs -r: the directories to create the partitions in")
	}
	if len(o.Addresses) > 0 && (o.ProcessID < 0 || o.ProcessID >= len(o.Addresses)) {
		return usagef("--process-id %d is not an index into the %d --addresses", o.ProcessID, len(o.Addresses))
	}
	if o.ConnTimeout < 0 {
		return usagef("--connect-timeout must not be negative, got %v", o.ConnTimeout)
	}
	if o.Secret != "" && o.SecretFile != "" {
		return usagef("give --cluster-secret or --cluster-secret-file, not both")
	}
	if set := btoi(o.Cert != "") + btoi(o.Key != "") + btoi(o.CA != ""); set != 0 && set != 3 {
		return usagef("TLS needs all of --cluster-cert, --cluster-key and --cluster-ca")
	}
	// Paths given on the command line that cannot be what they are for
	// are the caller's to fix (exit 2), not a failed run.
	if o.Input != "" && o.Input != "-" && !strings.Contains(o.Input, "://") {
		if _, err := os.Stat(o.Input); err != nil {
			return usagef("-i %s: %v", o.Input, errors.Unwrap(err))
		}
	}
	if o.Output != "" && o.Output != "-" && !strings.Contains(o.Output, "://") {
		if st, err := os.Stat(filepath.Dir(o.Output)); err != nil || !st.IsDir() {
			return usagef("-o %s: its directory %s does not exist", o.Output, filepath.Dir(o.Output))
		}
	}
	for _, d := range o.RecoveryDirs {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			return usagef("-r %s: not a directory (create it, then run again; --init-partitions N creates the partitions in it)", d)
		}
	}
	return nil
}

func runRun(ctx context.Context, o runOptions, specs []FlowSpec, stderr io.Writer) error {
	var spec *FlowSpec
	for i := range specs {
		if specs[i].Name == o.Flow {
			spec = &specs[i]
		}
	}
	if spec == nil {
		return usagef("unknown flow %q: flows are %s", o.Flow, flowNames(specs))
	}
	if err := o.validate(); err != nil {
		return err
	}
	flow, err := spec.Build(o.FlowOptions)
	if err != nil {
		return usageError{err}
	}
	cfg := core.Config{Workers: o.Workers, EpochInterval: o.Snapshot}
	buf, _ := human.ParseBytes(o.SnapshotBuf)
	ropts := recovery.Options{FlowName: flow.Name(), Intervals: recovery.Intervals{Snapshot: o.Snapshot, Backup: o.Backup}, MaxPendingBytes: buf}
	if o.StateMemory != "" {
		cfg.StateMemory, _ = human.ParseBytes(o.StateMemory)
		boundState(&ropts, cfg.StateMemory, o.snapBufSet)
	}
	prog := newProgress(stderr, flow.Name())
	var read atomic.Int64
	cfg.ItemsRead = &read
	prog.counts(&read)
	if prog != nil {
		cfg.OnEpoch = prog.opened
		cfg.OnStretch = prog.stretched
	}
	// What is durable, for the status line and for what an interrupted
	// run says it saved.
	tracker := &durableTracker{notify: prog.committed}
	durable := tracker.frontier
	ropts.OnCommitted = tracker.committed
	switch {
	case len(o.Addresses) > 1:
		cfg.Cluster = &core.ClusterConfig{ProcessID: o.ProcessID, Addresses: o.Addresses, Listen: o.Listen, ConnectTimeout: o.ConnTimeout,
			OnWaiting: func(msg string) { fmt.Fprintf(stderr, "flowrun: process %d: %s\n", o.ProcessID, msg) }}
		if err := o.clusterSecurity(cfg.Cluster, stderr); err != nil {
			return err
		}
		if len(o.RecoveryDirs) > 0 {
			cr := clustered.New(o.RecoveryDirs, ropts)
			if o.InitParts > 0 {
				cr.InitPartitions(o.InitParts, func(msg string) { fmt.Fprintf(stderr, "flowrun: %s\n", msg) })
			}
			cfg.Recovery = cr.OnDemand()
			durable = cr.Durable
			prog.durableFrom(cr.Durable)
		}
	case len(o.RecoveryDirs) > 0:
		if o.InitParts > 0 {
			created, err := recovery.EnsurePartitions(ctx, o.RecoveryDirs, o.InitParts)
			if err != nil {
				return err
			}
			if len(created) > 0 {
				fmt.Fprintf(stderr, "flowrun: first start: created %s in %s\n", human.Count(len(created), "recovery partition"), strings.Join(o.RecoveryDirs, ", "))
			}
		}
		st, err := recovery.OpenDirs(ctx, o.RecoveryDirs, ropts)
		if err != nil {
			return err
		}
		cfg.Recovery = local.New(st)
		prog.writes(len(st.Partitions()))
		tracker.parts = len(st.Partitions())
	}
	cfg.OnWarning = func(msg string) {
		prog.clear()
		fmt.Fprintf(stderr, "flowrun: warning: %s\n", msg)
	}
	cfg.OnStart = func(ri core.RunInfo) {
		if ri.LineageNote != "" {
			prog.clear()
			fmt.Fprintf(stderr, "flowrun: %s\n", ri.LineageNote)
		}
	}
	began := time.Now()
	res, err := core.Run(ctx, flow, cfg)
	prog.clear()
	if err != nil {
		if ctx.Err() != nil {
			return interrupted(context.Cause(ctx), cfg.Recovery != nil, durable())
		}
		return err
	}
	where := human.Count(o.Workers, "worker")
	if cfg.Cluster != nil {
		where = fmt.Sprintf("%s of process %d of %d", human.Count(o.Workers, "worker"), o.ProcessID, len(o.Addresses))
	}
	fmt.Fprintf(stderr, "flowrun: %s finished in %v: epochs %d..%d on %s", flow.Name(), time.Since(began).Round(time.Millisecond), res.StartEpoch, res.FinalEpoch, where)
	names := make([]string, 0, len(res.Counters))
	for n := range res.Counters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(stderr, ", %s=%d", n, res.Counters[n])
	}
	if res.IgnoredRows > 0 {
		fmt.Fprintf(stderr, ", ignored %d snapshot rows of steps this flow no longer has", res.IgnoredRows)
	}
	fmt.Fprintln(stderr)
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// clusterSecurity reads the cluster's secret and TLS material into c, and
// warns when the cluster would run on plain, unauthenticated TCP.
func (o runOptions) clusterSecurity(c *core.ClusterConfig, stderr io.Writer) error {
	secret := o.Secret
	if o.SecretFile != "" {
		b, err := os.ReadFile(o.SecretFile)
		if err != nil {
			return fmt.Errorf("read the cluster secret: %w", err)
		}
		secret = strings.TrimSpace(string(b))
		if secret == "" {
			return fmt.Errorf("the cluster secret file %s is empty", o.SecretFile)
		}
	}
	c.Secret = []byte(secret)
	if o.Cert != "" {
		cert, err := tls.LoadX509KeyPair(o.Cert, o.Key)
		if err != nil {
			return fmt.Errorf("load the cluster certificate: %w", err)
		}
		pem, err := os.ReadFile(o.CA)
		if err != nil {
			return fmt.Errorf("read the cluster CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("the cluster CA file %s holds no PEM certificate", o.CA)
		}
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if secret == "" && c.TLS == nil {
		fmt.Fprintln(stderr, "flowrun: warning: the cluster's connections are not authenticated: anyone who reaches --addresses during start-up can join, and anyone between the processes can read and change their frames; set FLOWRUN_CLUSTER_SECRET (or --cluster-secret-file) on every process, or use --cluster-cert/--cluster-key/--cluster-ca")
	}
	return nil
}

// interrupted is the error of a run stopped by a signal: it says what was
// saved, and exits 128+signal.
func interrupted(cause error, withRecovery bool, frontier core.Epoch) error {
	var sig signalError
	if !errors.As(cause, &sig) {
		return cause
	}
	msg := fmt.Sprintf("stopped by %v", sig.sig)
	switch {
	case !withRecovery:
		msg += "; nothing was saved (no -r): a new run starts over"
	case frontier > 1:
		msg += fmt.Sprintf("; state is durable through epoch %d: run again with the same -r to resume after it", frontier-1)
	default:
		msg += "; no epoch of this run became durable: run again with the same -r to resume where it began"
	}
	return interruptedError{sig, msg}
}

// boundState sets what a run with --state-memory n needs beyond the
// cache: compaction once the segments recovery added to its in-memory
// index (to serve reads) since the last pass a sixteenth of n (a key is
// then read from the base with one lookup), in every partition at once;
// a snapshot
// buffer in proportion to n (unless --snapshot-buffer was given); and,
// unless GOMEMLIMIT is set, a soft limit on the Go heap that keeps the
// garbage collector's headroom in proportion to n as well.
func boundState(ro *recovery.Options, n int64, bufSet bool) {
	ro.CompactLiveBytes = n / 16
	ro.CompactTogether = true
	if !bufSet {
		ro.MaxPendingBytes = min(ro.MaxPendingBytes, max(4<<20, n/4))
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(stateHeapLimit(n))
	}
}

// stateHeapLimit is the Go heap limit a run with --state-memory n gets:
// the state, half as much again for the garbage collector, and room for
// the rest of the run (batches in flight, buffers, the snapshot buffer).
func stateHeapLimit(n int64) int64 { return n + n/2 + 96<<20 }
