package backup_test

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// catalog makes one partition's backups taken at the given times (RFC 3339,
// optionally followed by " tag1,tag2").
func catalog(t *testing.T, specs ...string) []*backup.Manifest {
	t.Helper()
	var out []*backup.Manifest
	for i, s := range specs {
		at, tags, _ := strings.Cut(s, " ")
		ts, err := time.Parse(time.RFC3339, at)
		if err != nil {
			t.Fatal(err)
		}
		m := &backup.Manifest{ID: fmt.Sprintf("%s-%08x", ts.UTC().Format("20060102T150405.000Z"), i), Created: ts}
		if tags != "" {
			m.Tags = strings.Split(tags, ",")
		}
		out = append(out, m)
	}
	return out
}

func kept(keep map[*backup.Manifest][]string) []string {
	var out []string
	for m := range keep {
		out = append(out, m.Created.UTC().Format(time.RFC3339))
	}
	sort.Strings(out)
	return out
}

func TestRetention_KeepsWhatResticWould(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no time zone database:", err)
	}
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		policy backup.KeepPolicy
		specs  []string
		want   []string
	}{
		{"the newest is always kept", backup.KeepPolicy{Tags: []string{"none"}, Location: time.UTC},
			[]string{"2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"},
			[]string{"2026-12-02T00:00:00Z"}},
		{"last n", backup.KeepPolicy{Last: 2, Location: time.UTC},
			[]string{"2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"},
			[]string{"2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"}},
		{"daily keeps each day's newest", backup.KeepPolicy{Daily: 2, Location: time.UTC},
			[]string{"2026-12-04T01:00:00Z", "2026-12-04T23:00:00Z", "2026-12-05T08:00:00Z", "2026-12-05T09:00:00Z"},
			[]string{"2026-12-04T23:00:00Z", "2026-12-05T09:00:00Z"}},
		{"a gap of days does not use up the policy", backup.KeepPolicy{Daily: 3, Location: time.UTC},
			[]string{"2026-11-01T10:00:00Z", "2026-11-15T10:00:00Z", "2026-11-20T10:00:00Z", "2026-12-05T10:00:00Z"},
			[]string{"2026-11-15T10:00:00Z", "2026-11-20T10:00:00Z", "2026-12-05T10:00:00Z"}},
		{"days are the location's days", backup.KeepPolicy{Daily: 1, Location: berlin},
			// 23:30 UTC on the 4th is 00:30 on the 5th in Berlin: one day.
			[]string{"2026-12-04T22:30:00Z", "2026-12-04T23:30:00Z", "2026-12-05T10:00:00Z"},
			[]string{"2026-12-05T10:00:00Z"}},
		{"the same instants in UTC are two days", backup.KeepPolicy{Daily: 2, Location: time.UTC},
			[]string{"2026-12-04T22:30:00Z", "2026-12-04T23:30:00Z", "2026-12-05T10:00:00Z"},
			[]string{"2026-12-04T23:30:00Z", "2026-12-05T10:00:00Z"}},
		{"the hour that occurs twice when DST ends is one hour", backup.KeepPolicy{Hourly: 2, Location: berlin},
			// 2026-10-25: 02:00-03:00 CEST (00:00-01:00 UTC) and again CET (01:00-02:00 UTC).
			[]string{"2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", "2026-10-25T02:30:00Z"},
			[]string{"2026-10-25T01:30:00Z", "2026-10-25T02:30:00Z"}},
		{"a 25-hour day is one day", backup.KeepPolicy{Daily: 1, Location: berlin},
			[]string{"2026-10-24T22:30:00Z", "2026-10-25T22:30:00Z"},
			[]string{"2026-10-25T22:30:00Z"}},
		{"weekly is by ISO week across the year's end", backup.KeepPolicy{Weekly: 2, Location: time.UTC},
			// 2026-12-31 (Thu) and 2027-01-02 (Sat) are both in ISO week 2026-W53.
			[]string{"2026-12-24T10:00:00Z", "2026-12-31T10:00:00Z", "2027-01-02T10:00:00Z"},
			[]string{"2026-12-24T10:00:00Z", "2027-01-02T10:00:00Z"}},
		{"monthly and yearly", backup.KeepPolicy{Monthly: 2, Yearly: 3, Location: time.UTC},
			[]string{"2024-06-01T00:00:00Z", "2025-03-01T00:00:00Z", "2025-12-31T00:00:00Z", "2026-11-02T00:00:00Z", "2026-11-30T00:00:00Z"},
			[]string{"2024-06-01T00:00:00Z", "2025-12-31T00:00:00Z", "2026-11-30T00:00:00Z"}},
		{"within counts from now", backup.KeepPolicy{Within: 48 * time.Hour, Location: time.UTC},
			[]string{"2026-12-03T12:00:00Z", "2026-12-04T12:00:00Z", "2026-12-05T12:00:00Z"},
			[]string{"2026-12-04T12:00:00Z", "2026-12-05T12:00:00Z"}},
		{"tags keep whatever their age", backup.KeepPolicy{Tags: []string{"release"}, Location: time.UTC},
			[]string{"2020-01-01T00:00:00Z release", "2021-01-01T00:00:00Z other", "2026-12-05T00:00:00Z"},
			[]string{"2020-01-01T00:00:00Z", "2026-12-05T00:00:00Z"}},
		{"rules add up", backup.KeepPolicy{Last: 1, Daily: 2, Tags: []string{"x"}, Location: time.UTC},
			[]string{"2026-12-01T00:00:00Z x", "2026-12-04T00:00:00Z", "2026-12-05T01:00:00Z", "2026-12-05T02:00:00Z"},
			[]string{"2026-12-01T00:00:00Z", "2026-12-04T00:00:00Z", "2026-12-05T02:00:00Z"}},
		{"ties in time are decided by id, the same way every time", backup.KeepPolicy{Daily: 1, Location: time.UTC},
			[]string{"2026-12-05T10:00:00Z", "2026-12-05T10:00:00Z"},
			[]string{"2026-12-05T10:00:00Z"}},
	}
	for _, c := range tests {
		t.Run(c.name, func(t *testing.T) {
			ms := catalog(t, c.specs...)
			got := kept(c.policy.Keep(ms, now))
			if !slices.Equal(got, c.want) {
				t.Fatalf("kept %v, want %v", got, c.want)
			}
			// The order the catalog comes in changes nothing.
			slices.Reverse(ms)
			if again := kept(c.policy.Keep(ms, now)); !slices.Equal(again, got) {
				t.Fatalf("in reverse order kept %v, first %v", again, got)
			}
		})
	}
}

func TestRetention_ReasonsAndTies(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ms := catalog(t, "2026-12-05T10:00:00Z", "2026-12-05T10:00:00Z")
	keep := backup.KeepPolicy{Daily: 1, Location: time.UTC}.Keep(ms, now)
	if len(keep) != 1 || keep[ms[1]] == nil {
		t.Fatalf("of two backups at the same time, the one with the greater id is the newer: %v", keep)
	}
	if why := keep[ms[1]]; !slices.Equal(why, []string{"last 1", "daily 2026-12-05"}) {
		t.Fatalf("reasons %q", why)
	}
}

func TestRetention_Validate(t *testing.T) {
	for _, c := range []struct {
		r  backup.KeepPolicy
		ok bool
	}{
		{backup.KeepPolicy{Daily: 7}, true},
		{backup.KeepPolicy{Daily: -1}, false},
		{backup.KeepPolicy{Within: -time.Hour}, false},
		{backup.KeepPolicy{Tags: []string{"release-1.2"}}, true},
		{backup.KeepPolicy{Tags: []string{"two words"}}, false},
		{backup.KeepPolicy{Tags: []string{""}}, false},
	} {
		if err := c.r.Validate(); (err == nil) != c.ok {
			t.Errorf("%+v: %v", c.r, err)
		}
	}
}
