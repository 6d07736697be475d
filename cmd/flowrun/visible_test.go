package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineWatch records when each line of a flow's output first became visible
// to a reader: on a pipe (stdout), or in a file read as it grows (tail -f).
type lineWatch struct {
	mu   sync.Mutex
	seen map[string]time.Time
	done chan struct{}
}

func newLineWatch() *lineWatch {
	return &lineWatch{seen: map[string]time.Time{}, done: make(chan struct{})}
}

func (w *lineWatch) add(line string) {
	now := time.Now()
	w.mu.Lock()
	if _, ok := w.seen[line]; !ok {
		w.seen[line] = now
	}
	w.mu.Unlock()
}

// at returns when a line starting with prefix was first seen.
func (w *lineWatch) at(prefix string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for l, t := range w.seen {
		if strings.HasPrefix(l, prefix) {
			return t, true
		}
	}
	return time.Time{}, false
}

// readPipe records the lines of r as they arrive.
func (w *lineWatch) readPipe(r io.Reader) {
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			w.add(sc.Text())
		}
	}()
}

// tailFile records the complete lines of path as they are written, reading
// it every millisecond until stop is closed.
func (w *lineWatch) tailFile(path string, stop <-chan struct{}) {
	go func() {
		defer close(w.done)
		var off int64
		var part []byte
		buf := make([]byte, 64<<10)
		for {
			if f, err := os.Open(path); err == nil {
				for {
					n, err := f.ReadAt(buf, off)
					off += int64(n)
					part = append(part, buf[:n]...)
					for {
						i := bytes.IndexByte(part, '\n')
						if i < 0 {
							break
						}
						w.add(string(part[:i]))
						part = part[i+1:]
					}
					if err != nil || n == 0 {
						break
					}
				}
				f.Close()
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
}

// A logstats window closed by event time is visible while input still
// streams: on stdout and in the output file, without recovery and with a
// 30s snapshot interval, it appears within a second of the line that closed
// it (the sinks flush each batch; the epoch's commit holds nothing back).
func TestRun_LogstatsWindowVisibleWhileInputStreams(t *testing.T) {
	for _, toFile := range []bool{false, true} {
		for _, withRec := range []bool{false, true} {
			name := fmt.Sprintf("output=%s/recovery=%v", map[bool]string{false: "stdout", true: "file"}[toFile], withRec)
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				out := "-"
				if toFile {
					out = filepath.Join(dir, "out.csv")
				}
				args := []string{"run", "logstats", "-i", "-", "-o", out, "--window", "1s"}
				if withRec {
					rec := filepath.Join(dir, "rec")
					os.Mkdir(rec, 0o755)
					mustRun(t, "recovery", "init", rec, "2")
					args = append(args, "-r", rec, "-s", "30s", "-b", "0")
				}
				cmd := exec.Command(flowrunBin, args...)
				stdin, err := cmd.StdinPipe()
				if err != nil {
					t.Fatal(err)
				}
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				w := newLineWatch()
				stop := make(chan struct{})
				if toFile {
					w.tailFile(out, stop)
				} else {
					pipe, err := cmd.StdoutPipe()
					if err != nil {
						t.Fatal(err)
					}
					w.readPipe(pipe)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				defer func() {
					stdin.Close()
					cmd.Wait()
					close(stop)
					<-w.done
				}()
				// Line i (event time base+i s) closes the window
				// [base+(i-1)s, base+i s) of key k.
				const n = 6
				base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
				fed := make([]time.Time, n)
				for i := range n {
					fed[i] = time.Now()
					fmt.Fprintf(stdin, "%s k %d\n", base.Add(time.Duration(i)*time.Second).Format(time.RFC3339), i)
					time.Sleep(300 * time.Millisecond)
				}
				// Input is still open: the last window must show up anyway.
				deadline := time.Now().Add(3 * time.Second)
				var worst time.Duration
				for i := 1; i < n; i++ {
					prefix := "window," + base.Add(time.Duration(i-1)*time.Second).Format(time.RFC3339) + ","
					var at time.Time
					var ok bool
					for at, ok = w.at(prefix); !ok && time.Now().Before(deadline); at, ok = w.at(prefix) {
						time.Sleep(5 * time.Millisecond)
					}
					if !ok {
						t.Fatalf("window %d (%s...) was not visible %v after the line that closed it, with input still streaming\nstderr: %s",
							i, prefix, time.Since(fed[i]).Round(time.Millisecond), stderr.String())
					}
					worst = max(worst, at.Sub(fed[i]))
				}
				if worst > time.Second {
					t.Fatalf("a closed window took %v to become visible; want at most 1s", worst)
				}
				t.Logf("%s: slowest of %d windows visible %v after the line that closed it", name, n-1, worst.Round(100*time.Microsecond))
			})
		}
	}
}
