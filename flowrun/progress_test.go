package flowrun

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/core"
	"github.com/flowkeep/flowkeep/recovery"
)

func TestProgress_Line(t *testing.T) {
	type commit struct {
		part     recovery.PartitionIndex
		frontier recovery.Epoch
	}
	tests := []struct {
		name    string
		parts   int
		commits []commit
		epoch   core.Epoch
		want    string
	}{
		{"without recovery", 0, nil, 3, "flowrun: wc: epoch 3, running 2s"},
		{"nothing durable yet", 2, []commit{{0, 2}}, 2, "flowrun: wc: epoch 2, no epoch durable yet, running 2s"},
		{"durable through the lowest partition", 2, []commit{{0, 5}, {1, 4}, {0, 6}}, 6, "flowrun: wc: epoch 6, durable through epoch 3, running 2s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			now := time.Unix(100, 0)
			p := newProgressTo(&buf, "wc", func() time.Time { return now })
			p.writes(tt.parts)
			now = now.Add(2 * time.Second)
			for _, c := range tt.commits {
				p.committed(c.part, c.frontier)
			}
			buf.Reset()
			p.opened(tt.epoch)
			if got := strings.TrimPrefix(buf.String(), "\r\033[K"); got != tt.want {
				t.Fatalf("line %q, want %q", got, tt.want)
			}
			buf.Reset()
			p.clear()
			if buf.String() != "\r\033[K" {
				t.Fatalf("clear wrote %q", buf.String())
			}
			buf.Reset()
			p.clear()
			if buf.Len() != 0 {
				t.Fatalf("a second clear wrote %q", buf.String())
			}
		})
	}
}

// Off a terminal (a pipe, a log file) nothing is drawn at all.
func TestProgress_SilentOffATerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := newProgress(f, "wc")
	if p != nil {
		t.Fatal("progress drawn into a file")
	}
	p.writes(2)
	p.opened(5)
	p.committed(0, 3)
	p.clear()
	if fi, _ := f.Stat(); fi.Size() != 0 {
		t.Fatalf("wrote %d bytes into a file", fi.Size())
	}
}

// An epoch stretched by pacing says so on its line.
func TestProgress_ShowsStretchedEpochs(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(100, 0)
	p := newProgressTo(&buf, "wc", func() time.Time { return now })
	p.writes(1)
	p.committed(0, 4)
	p.stretched(4, 2300*time.Millisecond)
	buf.Reset()
	p.opened(5)
	if got := buf.String(); !strings.Contains(got, "epoch 5 (stretched 2.3s: snapshots are behind)") {
		t.Fatalf("line %q", got)
	}
	buf.Reset()
	p.opened(6)
	if got := buf.String(); strings.Contains(got, "stretched") {
		t.Fatalf("an epoch on time still says stretched: %q", got)
	}
}

// The line shows items read and their rate, and in a cluster the durable
// epoch of the whole flow.
func TestProgress_ReadRateAndClusterDurable(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(100, 0)
	p := newProgressTo(&buf, "wc", func() time.Time { return now })
	var read atomic.Int64
	p.counts(&read)
	frontier := core.Epoch(1)
	p.durableFrom(func() core.Epoch { return frontier })
	read.Store(5000)
	p.opened(2)
	if got := buf.String(); !strings.Contains(got, "read 5000 items") || !strings.Contains(got, "no epoch durable yet") {
		t.Fatalf("first line %q", got)
	}
	buf.Reset()
	now = now.Add(2 * time.Second)
	read.Store(2_005_000)
	frontier = 3
	p.opened(3)
	if got := buf.String(); !strings.Contains(got, "read 2.0M items (1.0M/s)") || !strings.Contains(got, "durable through epoch 2") {
		t.Fatalf("second line %q", got)
	}
}
