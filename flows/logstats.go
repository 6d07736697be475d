package flows

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/flowkeep/flowkeep/core"
)

// LogStatsConfig configures logstats.
type LogStatsConfig struct {
	IO
	// Window is the tumbling window size (default 1m).
	Window time.Duration
	// Lateness is how far behind a key's newest timestamp a line may be and
	// still count in its window (default 0).
	Lateness time.Duration
}

// Stats is a window's aggregate.
type Stats struct {
	Count int64   `json:"n"`
	Sum   float64 `json:"sum"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
}

// LogLine is one parsed input line.
type LogLine struct {
	Time  time.Time
	Key   string
	Value float64
}

// Counter names logstats reports.
const (
	CounterMalformed = "malformed_lines"
	CounterLate      = "late_lines"
)

// LogStats reads lines "RFC3339-timestamp key value" and writes, per key and
// tumbling event-time window, "window,START,END,KEY,COUNT,SUM,MIN,MAX". Lines
// that arrive after their window closed (beyond the allowed lateness) are
// written as "late,TIMESTAMP,KEY,VALUE" and counted; malformed lines are
// skipped and counted. Both counts are reported at the end of the run.
func LogStats(cfg LogStatsConfig) *core.Flow {
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	f := core.NewFlow("logstats")
	malformed := f.Counter(CounterMalformed)
	late := f.Counter(CounterLate)
	lines := core.Input(f, "read", cfg.source())
	parsed := core.FilterMap(lines, "parse", func(s string) (core.KV[LogLine], bool) {
		l, ok := ParseLogLine(s)
		if !ok {
			if strings.TrimSpace(s) != "" {
				malformed.Add(1)
			}
			return core.KV[LogLine]{}, false
		}
		return core.KV[LogLine]{Key: l.Key, Value: l}, true
	})
	wins := core.TumblingFold(parsed, "windows", core.WindowConfig[LogLine]{
		Size:     cfg.Window,
		Lateness: cfg.Lateness,
		Time:     func(l LogLine) time.Time { return l.Time },
	}, func() Stats { return Stats{Min: math.Inf(1), Max: math.Inf(-1)} }, func(s Stats, l LogLine) Stats {
		s.Count++
		s.Sum += l.Value
		s.Min = math.Min(s.Min, l.Value)
		s.Max = math.Max(s.Max, l.Value)
		return s
	})
	out := core.Map(wins, "format", func(kv core.KV[core.WindowEvent[LogLine, Stats]]) string {
		ev := kv.Value
		if ev.Late {
			late.Add(1)
			return "late," + ev.Item.Time.Format(time.RFC3339Nano) + "," + kv.Key + "," + fmtFloat(ev.Item.Value)
		}
		return "window," + ev.Start.Format(time.RFC3339) + "," + ev.End.Format(time.RFC3339) + "," + kv.Key + "," +
			strconv.FormatInt(ev.Value.Count, 10) + "," + fmtFloat(ev.Value.Sum) + "," + fmtFloat(ev.Value.Min) + "," + fmtFloat(ev.Value.Max)
	})
	core.Output(out, "write", cfg.sink())
	return f
}

// ParseLogLine parses "RFC3339-timestamp key value".
func ParseLogLine(s string) (LogLine, bool) {
	fs := strings.Fields(s)
	if len(fs) != 3 {
		return LogLine{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, fs[0])
	if err != nil {
		return LogLine{}, false
	}
	v, err := strconv.ParseFloat(fs[2], 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return LogLine{}, false
	}
	return LogLine{Time: t.UTC(), Key: fs[1], Value: v}, true
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
