package flowbackup

import (
	"fmt"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/internal/human"
	"github.com/flowkeep/flowkeep/restore"
)

// Point-in-time restore (restore --at, list --at) and the restorable
// window list and verify show.

// atHelp says what --at takes.
const atHelp = "an RFC 3339 time (2025-06-01T12:00:00Z, 2025-06-01T14:00:00+02:00) or how long ago (90m, 2h, 7d)"

// parseAt reads --at: an RFC 3339 time, or a duration before now. A time
// in the future is a usage error: no backup holds it.
func parseAt(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		d, derr := human.ParseDuration(s)
		if derr != nil || d < 0 {
			return time.Time{}, usagef("--at %q: give %s", s, atHelp)
		}
		t = now.Add(-d)
	}
	if t.After(now) {
		return time.Time{}, usagef("--at %s is in the future (it is %s now): no backup holds it", t.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// describeAt says what a plan for a time restores, for people: which
// epoch, when it closed, and whether it is exactly the state at the time.
func describeAt(p *restore.Plan) string {
	a := p.At
	at := fmtMilli(a.At)
	closed := fmtMilli(p.EpochTime)
	if !p.EpochTimeExact {
		closed = "at or before " + closed
	}
	switch {
	case !a.Settled && a.Lower > 0:
		return fmt.Sprintf("point in time %s: at most epoch %d; the manifests show epoch %d had closed by then, and a restore of every partition reads the images to settle which epoch the flow was in", at, p.Epoch, a.Lower)
	case !a.Settled:
		return fmt.Sprintf("point in time %s: at most epoch %d; a restore of every partition reads the images to settle which epoch the flow was in", at, p.Epoch)
	case a.Exact:
		next := ""
		if !a.Next.IsZero() {
			next = fmt.Sprintf("; the next closed at %s", fmtMilli(a.Next))
		}
		return fmt.Sprintf("point in time %s: exactly the state the flow was in then (epoch %d closed at %s%s)", at, p.Epoch, closed, next)
	case a.Reached > p.Epoch:
		return fmt.Sprintf("point in time %s: the flow had reached epoch %d by then, which not every partition's backups cover; restored epoch %d (closed at %s), the newest before it that they do", at, a.Reached, p.Epoch, closed)
	}
	return fmt.Sprintf("point in time %s: epoch %d (closed at %s), the newest epoch every partition's backups share that had closed by then; the backups do not show whether the flow had closed a newer one by then", at, p.Epoch, closed)
}

// fmtMilli is t in RFC 3339 with milliseconds (epochs may close several
// times a second; their times are recorded to the millisecond).
func fmtMilli(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// atPin is what every machine of a cluster passes to restore the plan's
// state: the settled epoch, or the one the manifests show closed by the
// time ("" if none).
func atPin(p *restore.Plan) string {
	e := p.Epoch
	if p.At != nil && !p.At.Settled {
		if e = p.At.Lower; e == 0 {
			return ""
		}
	}
	return fmt.Sprintf("--lineage %s --epoch %d", p.Lineage.Lineage.ID, e)
}
