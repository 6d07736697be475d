package flowbackup

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// One configuration for every subcommand, like Litestream's and rclone's:
// a setting comes from the command line, else from FLOWBACKUP_<FLAG> (the
// flag's name in capitals, dashes as underscores), else from the --config
// YAML file, else from the flag's default.
//
// The file's keys are flag names with underscores. A key applies to every
// subcommand that has the flag and is ignored by the others; a key no
// subcommand knows is an error (a typo must not pass silently). `url` (or
// `to`, as the agent's file always said) names the backup storage: --to of
// backup and agent, --from of the others. A section named after a
// subcommand (restore:, prune:, verify:, agent:, backup:, list:, copy:)
// applies to that subcommand only; copy takes `url` as its --from and
// copy.to as its --to. The s3: section holds the --s3-* flags.
// ${VAR} is replaced by the environment variable VAR (which must be set).
const configHelp = `Configuration file (--config FILE, or FLOWBACKUP_CONFIG), YAML; every key is
optional and the command line wins over it, FLOWBACKUP_<FLAG> variables over
the file. ${VAR} is replaced by the environment variable VAR.

  recovery_dir: /var/lib/flowkeep      # -r; also restore's target when --to is not given
  url: s3://my-bucket/flows/wordcount  # backup storage: --to of backup/agent, --from of the others
  workers: 8                           # objects moved at once
  lock_ttl: 15m
  schedule: "*/5 * * * *"              # agent
  metrics_addr: ":9464"                # agent
  log_format: json                     # agent: text or json
  log_level: info                      # agent: debug, info, warn, error
  keep_last: 10                        # prune, and the agent's retention
  keep_within: 24h                     # prune, and the agent's retention
  keep_daily: 7                        # ... and keep_hourly, keep_weekly, keep_monthly, keep_yearly, keep_tag
  object_lock: GOVERNANCE:30d          # backup, agent: lock what each backup writes
  s3:
    endpoint: https://minio.internal:9000   # path-style addressing is then the default
    region: eu-west-1
    path_style: true
    sse: aws:kms                       # or AES256
    kms_key_id: arn:aws:kms:...
  restore:                             # keys for one subcommand only
    if_empty: true
  verify:
    max_age: 15m
  copy:                                # copy --from is url; its --to:
    to: gs://dr-bucket/flows/wordcount`

// configAliases maps file keys that are not a flag's name to the flag.
var configAliases = map[string]string{
	"s3.kms_key_id": "s3-sse-kms-key-id",
}

var subcommands = []string{"backup", "agent", "list", "verify", "restore", "prune", "undelete", "copy"}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// loadConfig reads a config file into flat keys ("s3.endpoint",
// "restore.if_empty") and string values, with ${VAR} expanded.
func loadConfig(path string) (map[string]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("read config: %v", err)
	}
	var missing []string
	raw = envRef.ReplaceAllFunc(raw, func(m []byte) []byte {
		name := string(envRef.FindSubmatch(m)[1])
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		return []byte(v)
	})
	if len(missing) > 0 {
		return nil, usagef("config %s uses ${%s}, which is not set", path, strings.Join(missing, "}, ${"))
	}
	var doc map[string]any
	if err := yaml.NewDecoder(bytes.NewReader(raw)).Decode(&doc); err != nil && err.Error() != "EOF" {
		return nil, usagef("config %s: %v", path, err)
	}
	out := map[string]string{}
	var flatten func(prefix string, v any) error
	flatten = func(prefix string, v any) error {
		switch t := v.(type) {
		case map[string]any:
			for k, sub := range t {
				key := k
				if prefix != "" {
					key = prefix + "." + k
				}
				if err := flatten(key, sub); err != nil {
					return err
				}
			}
		case []any:
			parts := make([]string, len(t))
			for i, e := range t {
				parts[i] = fmt.Sprint(e)
			}
			out[prefix] = strings.Join(parts, ",")
		case nil:
		default:
			out[prefix] = fmt.Sprint(t)
		}
		return nil
	}
	if err := flatten("", doc); err != nil {
		return nil, err
	}
	return out, nil
}

// flagFor says which flag of cmd a config key sets ("" if none), and
// whether any subcommand knows the key.
func flagFor(root, cmd *cobra.Command, key string) (flag string, known bool) {
	sub, rest, sectioned := strings.Cut(key, ".")
	if sectioned && slices.Contains(subcommands, sub) {
		if sub != cmd.Name() {
			return "", knownAnywhere(root, rest)
		}
		key = rest
	}
	switch key {
	case "url", "to":
		if cmd.Name() == "restore" && key == "to" && sectioned {
			return "to", true // restore: {to: DIR}
		}
		if cmd.Name() == "copy" {
			if key == "to" && sectioned {
				return "to", true // copy: {to: URL}
			}
			return "from", true // what copy copies is the configured location
		}
		for _, f := range []string{"to", "from"} {
			if cmd.Name() != "restore" || f == "from" {
				if cmd.Flags().Lookup(f) != nil {
					return f, true
				}
			}
		}
		return "", true
	}
	if key == "recovery_dir" && cmd.Name() == "restore" {
		return "to", true // restore lays the partitions back where the flow keeps them
	}
	name := configAliases[key]
	if name == "" {
		name = strings.NewReplacer(".", "-", "_", "-").Replace(key)
	}
	if cmd.Flags().Lookup(name) != nil && name != "config" {
		return name, true
	}
	return "", knownAnywhere(root, key)
}

func knownAnywhere(root *cobra.Command, key string) bool {
	if key == "url" || key == "to" {
		return true
	}
	name := configAliases[key]
	if name == "" {
		name = strings.NewReplacer(".", "-", "_", "-").Replace(key)
	}
	for _, c := range root.Commands() {
		if c.Flags().Lookup(name) != nil {
			return true
		}
	}
	return false
}

// applySettings fills cmd's flags not given on the command line from the
// environment and the config file (see the top of this file).
func applySettings(root, cmd *cobra.Command) error {
	fs := cmd.Flags()
	given := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { given[f.Name] = true })
	path, _ := fs.GetString("config")
	if path == "" {
		path = os.Getenv("FLOWBACKUP_CONFIG")
	}
	if path != "" {
		cfg, err := loadConfig(path)
		if err != nil {
			return err
		}
		keys := make([]string, 0, len(cfg))
		for k := range cfg {
			keys = append(keys, k)
		}
		// Top-level keys first, then the subcommand's section: a section's
		// setting is the more specific one, and wins.
		sort.Slice(keys, func(i, j int) bool {
			si, sj := strings.Contains(keys[i], "."), strings.Contains(keys[j], ".")
			if si != sj {
				return sj
			}
			return keys[i] < keys[j]
		})
		for _, k := range keys {
			flag, known := flagFor(root, cmd, k)
			if !known {
				return usagef("config %s: unknown setting %q (see flowbackup --help for the keys)", path, k)
			}
			if flag == "" || given[flag] {
				continue
			}
			if err := setSetting(fs, flag, cfg[k]); err != nil {
				return usagef("config %s: %s: %v", path, k, err)
			}
		}
	}
	var err error
	fromEnv := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || given[f.Name] || f.Name == "help" {
			return
		}
		name := "FLOWBACKUP_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			fromEnv[f.Name] = true
			if serr := setSetting(fs, f.Name, v); serr != nil {
				err = usagef("%s=%q: %v", name, v, serr)
			}
		}
	})
	if err != nil {
		return err
	}
	// FLOWBACKUP_URL names the location for every subcommand, as the
	// config's url does: --to of backup and agent, --from of the others.
	// A flag on the command line, or FLOWBACKUP_TO/FROM, win over it.
	if v, ok := os.LookupEnv("FLOWBACKUP_URL"); ok {
		loc := "from"
		if cmd.Name() == "backup" || cmd.Name() == "agent" {
			loc = "to"
		}
		if f := fs.Lookup(loc); f != nil && !given[loc] && !fromEnv[loc] {
			if serr := setSetting(fs, loc, v); serr != nil {
				return usagef("FLOWBACKUP_URL=%q: %v", v, serr)
			}
		}
	}
	return nil
}

// setSetting sets flag name from the environment or the config file. The
// value replaces what a source of lower precedence set: a repeatable flag
// (restore --from, --trusted-keys) set by the file and by the environment
// takes the environment's, as a single-valued one does; only the command
// line repeats it.
func setSetting(fs *pflag.FlagSet, name, v string) error {
	if f := fs.Lookup(name); f != nil && f.Changed {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			if err := sv.Replace(nil); err != nil {
				return err
			}
		}
	}
	return fs.Set(name, v)
}

// looksLikeURL says whether s names a storage location rather than a
// directory.
func looksLikeURL(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	return ok && scheme != "" && !strings.ContainsAny(scheme, "/.")
}
