package backup

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// KeepPolicy is which backups of a partition prune keeps (its retention), with restic's
// names and meanings (restic forget --keep-*):
//
//   - Last keeps the newest Last backups (always at least the newest one).
//   - Within keeps every backup younger than Within, counted from now.
//   - Hourly, Daily, Weekly, Monthly and Yearly keep, for each of the last
//     N hours (days, ISO weeks, months, years) that hold a backup, the
//     newest backup of that period. Periods without a backup are skipped,
//     not counted, so a gap never uses up the policy. Periods are those of
//     the clock in Location (default time.Local), as on the operators'
//     calendars: on a day that is 23 or 25 hours long, it is one day, and
//     an hour that occurs twice (DST ending) is one hour.
//   - Tags keeps every backup carrying one of them (backup --tag).
//
// A backup is kept if any rule keeps it. Prune then keeps also what the
// newest restore of every live history needs, whatever the policy says.
type KeepPolicy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	Within                                       time.Duration
	Tags                                         []string
	Location                                     *time.Location
}

// Validate refuses a policy with a negative count or duration, or a bad tag.
func (r KeepPolicy) Validate() error {
	for _, c := range []struct {
		name string
		n    int
	}{{"keep-last", r.Last}, {"keep-hourly", r.Hourly}, {"keep-daily", r.Daily}, {"keep-weekly", r.Weekly}, {"keep-monthly", r.Monthly}, {"keep-yearly", r.Yearly}} {
		if c.n < 0 {
			return fmt.Errorf("%s must not be negative, got %d", c.name, c.n)
		}
	}
	if r.Within < 0 {
		return fmt.Errorf("keep-within must not be negative, got %v", r.Within)
	}
	for _, t := range r.Tags {
		if err := ValidateTag(t); err != nil {
			return fmt.Errorf("keep-tag: %w", err)
		}
	}
	return nil
}

// Empty says whether the policy names no rule at all (prune then keeps
// only the newest backup of each partition and what restores need).
func (r KeepPolicy) Empty() bool {
	return r.Last == 0 && r.Hourly == 0 && r.Daily == 0 && r.Weekly == 0 && r.Monthly == 0 && r.Yearly == 0 && r.Within == 0 && len(r.Tags) == 0
}

// String describes the policy as the flags that make it.
func (r KeepPolicy) String() string {
	var parts []string
	for _, c := range []struct {
		name string
		n    int
	}{{"last", r.Last}, {"hourly", r.Hourly}, {"daily", r.Daily}, {"weekly", r.Weekly}, {"monthly", r.Monthly}, {"yearly", r.Yearly}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("--keep-%s %d", c.name, c.n))
		}
	}
	if r.Within > 0 {
		parts = append(parts, fmt.Sprintf("--keep-within %v", r.Within))
	}
	for _, t := range r.Tags {
		parts = append(parts, "--keep-tag "+t)
	}
	return strings.Join(parts, " ")
}

var tagRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`)

// ValidateTag refuses a tag that is not 1 to 64 letters, digits and
// ". _ : -" (starting with a letter or digit): tags are stored in the
// plaintext index, and printed.
func ValidateTag(t string) error {
	if !tagRE.MatchString(t) {
		return fmt.Errorf("tag %q: use 1 to 64 letters, digits and . _ : - (starting with a letter or digit)", t)
	}
	return nil
}

// Keep says which of one partition's backups r keeps at now, and why:
// each kept backup maps to its reasons ("last 1", "daily 2026-12-05",
// "within 7d", "tag release"). It is a pure function of its arguments.
func (r KeepPolicy) Keep(ms []*Manifest, now time.Time) map[*Manifest][]string {
	loc := r.Location
	if loc == nil {
		loc = time.Local
	}
	sorted := slices.Clone(ms)
	// Newest first; ids are times then random, so ties are decided the
	// same way every time.
	sort.Slice(sorted, func(i, j int) bool {
		a, b := sorted[i].Created, sorted[j].Created
		if !a.Equal(b) {
			return a.After(b)
		}
		return sorted[i].ID > sorted[j].ID
	})
	keep := map[*Manifest][]string{}
	add := func(m *Manifest, why string) { keep[m] = append(keep[m], why) }
	for i, m := range sorted {
		if i < max(r.Last, 1) {
			add(m, fmt.Sprintf("last %d", i+1))
		}
		if r.Within > 0 && now.Sub(m.Created) <= r.Within {
			add(m, "within "+r.Within.String())
		}
		for _, t := range r.Tags {
			if slices.Contains(m.Tags, t) {
				add(m, "tag "+t)
			}
		}
	}
	for _, p := range []struct {
		name   string
		n      int
		period func(time.Time) string
	}{
		{"hourly", r.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15h") }},
		{"daily", r.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", r.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{"monthly", r.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", r.Yearly, func(t time.Time) string { return t.Format("2006") }},
	} {
		if p.n <= 0 {
			continue
		}
		last, seen := "", 0
		for _, m := range sorted {
			k := p.period(m.Created.In(loc))
			if k == last {
				continue // an older backup of a period already kept
			}
			if seen == p.n {
				break
			}
			last, seen = k, seen+1
			add(m, p.name+" "+k)
		}
	}
	return keep
}
