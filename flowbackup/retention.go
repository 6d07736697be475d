package flowbackup

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

// retentionFlags are the --keep-* flags prune and the agent share.
type retentionFlags struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	Within                                       time.Duration
	Tags                                         []string
}

// add defines the flags; what says what they apply to ("" for prune,
// "after each run, " for the agent).
func (r *retentionFlags) add(f *pflag.FlagSet, what string) {
	f.IntVar(&r.Last, "keep-last", 0, what+"keep the newest N backups of each partition")
	human.DurationVar(f, &r.Within, "keep-within", 0, what+"keep backups younger than this (e.g. 24h, 7d)")
	f.IntVar(&r.Hourly, "keep-hourly", 0, what+"keep the newest backup of each of the last N hours that have one")
	f.IntVar(&r.Daily, "keep-daily", 0, what+"keep the newest backup of each of the last N days that have one")
	f.IntVar(&r.Weekly, "keep-weekly", 0, what+"keep the newest backup of each of the last N ISO weeks that have one")
	f.IntVar(&r.Monthly, "keep-monthly", 0, what+"keep the newest backup of each of the last N months that have one")
	f.IntVar(&r.Yearly, "keep-yearly", 0, what+"keep the newest backup of each of the last N years that have one")
	f.StringArrayVar(&r.Tags, "keep-tag", nil, what+"keep every backup tagged TAG (backup --tag; repeatable)")
}

// policy is the retention the flags ask for (calendar periods in the
// local time zone, $TZ); a bad value is a usage error.
func (r retentionFlags) policy() (backup.KeepPolicy, error) {
	p := backup.KeepPolicy{Last: r.Last, Hourly: r.Hourly, Daily: r.Daily, Weekly: r.Weekly, Monthly: r.Monthly, Yearly: r.Yearly,
		Within: r.Within, Tags: r.Tags, Location: time.Local}
	if err := p.Validate(); err != nil {
		return p, usageError{err}
	}
	return p, nil
}

const retentionHelp = `KeepPolicy rules, with restic's names: a backup is kept if any rule keeps it.
--keep-last N keeps each partition's newest N; --keep-within DUR those younger
than DUR; --keep-hourly/-daily/-weekly/-monthly/-yearly N the newest backup of
each of the last N hours (days, ISO weeks, months, years) that have one, in the
local time zone ($TZ; periods without backups are skipped, not counted);
--keep-tag TAG every backup tagged TAG. The newest backup of each partition,
and every backup the newest restore of a live history needs, are always kept.`

// addTagFlag is backup's and the agent's --tag.
func addTagFlag(f *pflag.FlagSet, p *[]string) {
	f.StringArrayVar(p, "tag", nil, "label the backups with TAG (repeatable; prune --keep-tag TAG keeps them)")
}

// checkTags refuses tags prune could not keep by.
func checkTags(tags []string) error {
	for _, t := range tags {
		if err := backup.ValidateTag(t); err != nil {
			return usageError{err}
		}
	}
	return nil
}
