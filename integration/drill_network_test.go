package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Drill 7: a hostile network in front of the S3 server for every request
// of backup, verify --deep and restore: 5xx answers, dropped connections,
// slow responses, bodies cut short and bodies with a flipped byte. Each
// operation either succeeds with correct data or fails cleanly with its
// documented exit code; none succeeds with wrong data.
// It runs on S3, in the clear and encrypted.
func TestDrill7_HostileNetwork(t *testing.T) {
	for _, b := range backends(t) {
		if b.name == "s3" || b.name == "s3+age" {
			t.Run(b.name, func(t *testing.T) { hostileNetwork(t, b) })
		}
	}
}

func hostileNetwork(t *testing.T, b backend) {
	began := time.Now()
	url := b.newURL(t)
	direct := b.env(b.addr)
	proxy := newFaultProxy(t, b.addr, b.signsHost)
	proxy.rate = 0.3
	faulty := b.env(proxy.addr)
	dir := t.TempDir()
	rec, in, out := bigFlow(t, dir, 4)
	type tally struct{ ok, clean int }
	var bk, vf, rs tally
	for round := 0; round < 3; round++ {
		appendWordsFrom(t, in, 10_000, 1_000_000*(round+1), 5000, int64(round))
		wcRun(t, in, out, rec)
		proxy.on.Store(true)
		r := runCmd(t, faulty, backupBin, "backup", "-r", rec, "--to", url)
		proxy.on.Store(false)
		switch {
		case r.code == 0:
			bk.ok++
		case r.code == 1 && strings.Contains(r.out, "FAILED"):
			bk.clean++
		default:
			t.Fatalf("round %d: backup exit %d without a clear error:\n%s", round, r.code, r.out)
		}
		// Checked without faults: whatever the backup did, the bucket holds
		// no partial or wrong backup.
		if v := runCmd(t, direct, backupBin, "verify", "--from", url, "--deep"); bk.ok > 0 && v.code != 0 {
			t.Fatalf("round %d: direct verify after the backup: exit %d\n%s", round, v.code, v.out)
		}
		// Through the faulty network, a healthy bucket is never reported
		// damaged: a byte flipped in transit is read again, and damage is
		// the store's only when two reads return the same damaged bytes.
		proxy.on.Store(true)
		v := runCmd(t, faulty, backupBin, "verify", "--from", url, "--deep")
		proxy.on.Store(false)
		switch {
		case bk.ok > 0 && strings.Contains(v.out, "damaged in the store"):
			t.Fatalf("round %d: verify --deep through the faulty network calls a healthy bucket damaged:\n%s", round, v.out)
		case v.code == 0 && strings.Contains(v.out, "healthy"):
			vf.ok++
		case (v.code == 1 || v.code == 2) && v.out != "":
			vf.clean++
		default:
			t.Fatalf("round %d: verify --deep exit %d:\n%s", round, v.code, v.out)
		}
		if bk.ok == 0 {
			continue
		}
		// The newest backup may be older than the flow; restore what the
		// bucket holds and compare with a restore made without faults.
		want := filepath.Join(dir, fmt.Sprintf("want-%d", round))
		mustCmd(t, direct, backupBin, "restore", "--from", url, "--to", want)
		dst := filepath.Join(dir, fmt.Sprintf("restored-%d", round))
		proxy.on.Store(true)
		r = runCmd(t, faulty, backupBin, "restore", "--from", url, "--to", dst)
		proxy.on.Store(false)
		if r.code != 0 {
			if parts, _ := filepath.Glob(filepath.Join(dst, "part-*")); len(parts) > 0 || r.code != 1 {
				t.Fatalf("round %d: failed restore (exit %d) left %v:\n%s", round, r.code, parts, r.out)
			}
			rs.clean++
			continue
		}
		rs.ok++
		got, wantOut := filepath.Join(dir, fmt.Sprintf("got-%d", round), filepath.Base(out)), filepath.Join(dir, fmt.Sprintf("wantout-%d", round), filepath.Base(out))
		for _, p := range []string{got, wantOut} {
			os.MkdirAll(filepath.Dir(p), 0o755)
			copyFile(t, out, p)
		}
		wcRun(t, in, got, dst)
		wcRun(t, in, wantOut, want)
		if readFile(t, got) != readFile(t, wantOut) {
			t.Fatalf("round %d: a restore through the faulty network continues differently from one without faults\n%s", round, r.out)
		}
	}
	t.Logf("%s: backup %d ok / %d failed cleanly; verify --deep %d ok / %d failed cleanly; restore %d ok / %d failed cleanly; %d faulty requests (%d bodies with a flipped byte)",
		t.Name(), bk.ok, bk.clean, vf.ok, vf.clean, rs.ok, rs.clean, proxy.hits.Load(), proxy.flipped.Load())
	drillLog(t, began, "nothing (no operation succeeded with wrong data)")
}
