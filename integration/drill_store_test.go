package integration

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// bigFlow makes a recovery directory whose partitions hold ~100k words.
func bigFlow(t *testing.T, dir string, parts int) (rec, in, out string) {
	t.Helper()
	rec, in, out = filepath.Join(dir, "rec"), filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	initRec(t, rec, parts)
	appendWordsFrom(t, in, 60_000, 0, 120_000, 1)
	mustCmd(t, nil, flowrunBin, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "200ms", "-b", "2s", "-w", "2")
	return
}

func wcRun(t *testing.T, in, out string, recs ...string) {
	t.Helper()
	args := []string{"run", "wordcount", "-i", in, "-o", out, "-s", "200ms", "-b", "2s", "-w", "2"}
	for _, r := range recs {
		args = append(args, "-r", r)
	}
	mustCmd(t, nil, flowrunBin, args...)
}

// Drill 2: the agent is killed mid-upload, at several points. No partial
// backup may ever be listed or restored, verify stays healthy, and the next
// run completes (taking over the dead agent's lock).
func TestDrill2_AgentKilledMidUpload(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			began := time.Now()
			env := b.env(b.addr)
			url := b.newURL(t)
			rec, in, out := bigFlow(t, t.TempDir(), 4)
			mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url)
			r := rand.New(rand.NewSource(time.Now().UnixNano()))
			kills := 0
			// Kill at a random point of the upload; when a backup finished
			// before the kill, aim earlier next time (and go on until a
			// kill lands, up to 10 rounds).
			window := 170 * time.Millisecond
			for k := 1; k <= 3 || kills == 0 && k <= 10; k++ {
				// Most rows are new: the next backup is a fresh base, the biggest upload.
				appendWordsFrom(t, in, 60_000, 120_000*k, 120_000, int64(k))
				wcRun(t, in, out, rec)
				p := startCmd(t, env, backupBin, "backup", "-r", rec, "--to", url)
				time.Sleep(5*time.Millisecond + time.Duration(r.Int63n(int64(window))))
				if p.kill() {
					kills++
				} else {
					window = max(window/2, 10*time.Millisecond)
				}
				v := runCmd(t, env, backupBin, "verify", "--from", url)
				if v.code != 0 {
					t.Fatalf("after kill %d verify says (exit %d):\n%s", k, v.code, v.out)
				}
			}
			if kills == 0 {
				t.Fatal("no kill landed mid-upload")
			}
			mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url)
			v := runCmd(t, env, backupBin, "verify", "--from", url, "--deep")
			if v.code != 0 {
				t.Fatalf("deep verify after the kills (exit %d):\n%s", v.code, v.out)
			}
			mustCmd(t, env, backupBin, "restore", "--from", url, "--to", filepath.Join(t.TempDir(), "restored"))
			drillLog(t, began, fmt.Sprintf("nothing (%d kills mid-upload; every listed backup restores)", kills))
		})
	}
}

// Drill 3: the object store misbehaves for a stretch of time (errors 500
// and 503, slow responses, dropped connections, truncated bodies). Backups
// retry and complete, or fail clearly with no visible partial backup; a
// restore never lays down a corrupt partition.
func TestDrill3_ObjectStoreFaults(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			began := time.Now()
			url := b.newURL(t)
			direct := b.env(b.addr)
			proxy := newFaultProxy(t, b.addr, b.signsHost)
			faulty := b.env(proxy.addr)
			dir := t.TempDir()
			rec, in, out := bigFlow(t, dir, 4)
			succeeded := 0
			var failures []string
			for round := 0; round < 2; round++ {
				appendWordsFrom(t, in, 20_000, 1_000_000*(round+1), 5000, int64(round))
				wcRun(t, in, out, rec)
				proxy.faultFor(2 * time.Second)
				res := runCmd(t, faulty, backupBin, "backup", "-r", rec, "--to", url)
				switch {
				case res.code == 0:
					succeeded++
				default:
					failures = append(failures, res.out)
				}
				switch {
				case res.code == 0:
				case !strings.Contains(res.out, "FAILED") && !strings.Contains(res.out, "attempts"):
					t.Fatalf("backup failed without a clear error (exit %d):\n%s", res.code, res.out)
				}
				// Whatever happened, nothing partial is visible.
				if v := runCmd(t, direct, backupBin, "verify", "--from", url, "--deep"); v.code != 0 && succeeded > 0 {
					t.Fatalf("verify after faulty backup round %d (exit %d):\n%s", round, v.code, v.out)
				}
			}
			if succeeded == 0 {
				t.Fatalf("no backup got through %d fault stretches: the retries are not patient enough:\n%s", 2, strings.Join(failures, "\n"))
			}
			// The newest backup is the current state, so any restore that
			// succeeds must continue exactly where the flow stands.
			mustCmd(t, direct, backupBin, "backup", "-r", rec, "--to", url)
			for round := 0; round < 2; round++ {
				dst := filepath.Join(dir, fmt.Sprintf("restored-%d", round))
				proxy.faultFor(2 * time.Second)
				res := runCmd(t, faulty, backupBin, "restore", "--from", url, "--to", dst)
				if res.code != 0 {
					if parts, _ := filepath.Glob(filepath.Join(dst, "part-*")); len(parts) > 0 {
						t.Fatalf("failed restore left %v behind:\n%s", parts, res.out)
					}
					continue
				}
				// A restore that succeeded must hold exactly the backed-up state.
				// The output keeps its name (the sink's partition is named
				// after it): a copy in another directory.
				cont := filepath.Join(dir, fmt.Sprintf("cont-%d", round), filepath.Base(out))
				os.MkdirAll(filepath.Dir(cont), 0o755)
				copyFile(t, out, cont)
				wcRun(t, in, cont, dst)
				if b1, b2 := readFile(t, out), readFile(t, cont); b1 != b2 {
					t.Fatalf("the restored flow does not continue where the backed-up one stood (%d vs %d bytes)\nrestore said:\n%s\nlist:\n%s\ninspect:\n%s", len(b1), len(b2), res.out,
						runCmd(t, direct, backupBin, "list", "--from", url).out, runCmd(t, nil, flowrunBin, "recovery", "inspect", dst).out)
				}
			}
			drillLog(t, began, fmt.Sprintf("nothing (%d of 2 backups got through faults; %d faulty requests)", succeeded, proxy.hits.Load()))
		})
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Drill 4: bit rot in the bucket. verify --deep names the damaged backup and
// exits 1; restore falls back to an older overlap.
func TestDrill4_BitRot(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			began := time.Now()
			env := b.env(b.addr)
			url := b.newURL(t)
			dir := t.TempDir()
			rec, in, out := bigFlow(t, dir, 3)
			mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url)
			appendWordsFrom(t, in, 5_000, 5_000_000, 2000, 9)
			wcRun(t, in, out, rec)
			mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url)

			ctx := context.Background()
			st := b.open(t, url)
			cat, err := backup.LoadCatalog(ctx, st, 0)
			if err != nil {
				t.Fatal(err)
			}
			var victim *backup.Manifest
			for _, m := range cat.Manifests {
				if m.Partition.Index == 1 && (victim == nil || m.ID > victim.ID) {
					victim = m
				}
			}
			if victim.Delta == nil {
				t.Fatalf("newest backup of partition 1 is not a delta")
			}
			key := backup.ChunkKey(victim.Delta.Chunks[0].SHA256)
			data, err := backup.ReadAll(ctx, st, key, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 0x04
			if err := st.Put(ctx, key, data); err != nil {
				t.Fatal(err)
			}

			v := runCmd(t, env, backupBin, "verify", "--from", url, "--deep")
			if v.code != 1 || !strings.Contains(v.out, victim.ID) {
				t.Fatalf("verify --deep: exit %d, want 1 naming %s:\n%s", v.code, victim.ID, v.out)
			}
			res := mustCmd(t, env, backupBin, "restore", "--from", url, "--to", filepath.Join(dir, "restored"))
			if !strings.Contains(res, "fallback: backup "+victim.ID) {
				t.Fatalf("restore did not report the fallback:\n%s", res)
			}
			drillLog(t, began, "the damaged backup only (restored the older overlap)")
		})
	}
}

// Drill 5: backups of different partitions taken up to -b apart still
// restore; taken further apart, verify and restore say so (exit 2) instead
// of restoring an inconsistent flow.
func TestDrill5_BackupsApart(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			began := time.Now()
			env := b.env(b.addr)
			for _, tc := range []struct {
				name     string
				between  int // runs (each one epoch) between the two backups
				wantCode int
			}{{"within -b", 2, 0}, {"beyond -b", 6, 2}} {
				dir := t.TempDir()
				url := b.newURL(t)
				rec, in, out := filepath.Join(dir, "rec"), filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
				initRec(t, rec, 4)
				run := func(seed int) {
					appendWords(t, in, 500, 300, int64(seed))
					// -s 1s, -b 3s: d = 3 epochs; each short run is one epoch.
					mustCmd(t, nil, flowrunBin, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "1s", "-b", "3s")
				}
				run(0)
				mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url, "--partitions", "0")
				for i := 1; i <= tc.between; i++ {
					run(i)
				}
				mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url, "--partitions", "1-3")
				v := runCmd(t, env, backupBin, "verify", "--from", url)
				r := runCmd(t, env, backupBin, "restore", "--from", url, "--to", filepath.Join(dir, "restored"))
				if v.code != tc.wantCode || r.code != tc.wantCode {
					t.Fatalf("%s: verify exit %d, restore exit %d, want %d\n%s\n%s", tc.name, v.code, r.code, tc.wantCode, v.out, r.out)
				}
				if tc.wantCode == 2 && (!strings.Contains(r.out, "too far apart") || !strings.Contains(r.out, "-b")) {
					t.Fatalf("%s: restore does not say why and what to do:\n%s", tc.name, r.out)
				}
				if tc.wantCode == 2 {
					if parts, _ := filepath.Glob(filepath.Join(dir, "restored", "*")); len(parts) > 0 {
						t.Fatalf("refused restore wrote %v", parts)
					}
				}
			}
			drillLog(t, began, "nothing (an inconsistent restore was refused)")
		})
	}
}

// Drill 6: the restore target's disk is full. The restore fails with a
// clear error and leaves nothing half-restored behind.
func TestDrill6_DiskFullOnRestore(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			began := time.Now()
			env := b.env(b.addr)
			url := b.newURL(t)
			rec, _, _ := bigFlow(t, t.TempDir(), 4)
			mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url)
			// A disk with room for about half of the partitions.
			var total int64
			files, _ := filepath.Glob(filepath.Join(rec, "*"))
			for _, f := range files {
				if st, err := os.Stat(f); err == nil {
					total += st.Size()
				}
			}
			mnt := t.TempDir()
			size := fmt.Sprintf("size=%dk", max(total/2048, 64))
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", size, "tmpfs", mnt).CombinedOutput(); err != nil {
				t.Skipf("cannot mount a small tmpfs here (%v: %s): this drill needs root", err, out)
			}
			t.Cleanup(func() { exec.Command("umount", mnt).Run() })
			dst := filepath.Join(mnt, b.name)
			r := runCmd(t, env, backupBin, "restore", "--from", url, "--to", dst)
			if r.code == 0 || !strings.Contains(r.out, "no space left on device") {
				t.Fatalf("restore of %d bytes onto a disk of %s: exit %d\n%s", total, size, r.code, r.out)
			}
			left, _ := os.ReadDir(dst)
			if len(left) > 0 {
				var names []string
				for _, e := range left {
					names = append(names, e.Name())
				}
				t.Fatalf("left behind: %v", names)
			}
			drillLog(t, began, "nothing (the restore refused cleanly)")
		})
	}
}
