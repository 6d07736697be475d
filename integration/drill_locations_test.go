package integration

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/backup"
)

// Drill 11: the primary region is in trouble. Backups go to S3 (A) and are
// copied, object for object, to GCS (B). With chunks of the newest backups
// lost in A, a restore from both reads them from B and says so; with A's
// bucket gone, B alone serves; a restore to a point in time between two
// backups works across both, to exactly the epoch the flow was in then.
func TestDrill11_RestoreFromTwoClouds(t *testing.T) {
	bs := backends(t)
	s3b, gcsb := bs[0], bs[1]
	began := time.Now()
	ctx := context.Background()
	env := append(s3b.env(s3b.addr), gcsb.env(gcsb.addr)...)
	urlA, urlB := s3b.newURL(t), gcsb.newURL(t)
	dir := t.TempDir()
	rec, in, out := bigFlow(t, dir, 3)
	mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", urlA)
	appendWordsFrom(t, in, 5_000, 5_000_000, 2000, 11)
	wcRun(t, in, out, rec)
	time.Sleep(100 * time.Millisecond)
	at := time.Now()
	time.Sleep(100 * time.Millisecond)
	appendWordsFrom(t, in, 5_000, 6_000_000, 2000, 12)
	wcRun(t, in, out, rec)
	mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", urlA)

	// B is a copy of A, made as flowbackup copy makes it: every object as
	// stored.
	stA, stB := s3b.open(t, urlA), gcsb.open(t, urlB)
	err := stA.List(ctx, "", "", func(oi backup.ObjectInfo) error {
		b, err := backup.ReadAll(ctx, stA, oi.Key, 1<<30)
		if err != nil {
			return err
		}
		return stB.Put(ctx, oi.Key, b)
	})
	if err != nil {
		t.Fatal(err)
	}
	// A loses the chunks of its newest backups.
	cat, err := backup.LoadCatalog(ctx, stA, 0)
	if err != nil {
		t.Fatal(err)
	}
	newest := map[int]*backup.Manifest{}
	for _, m := range cat.Manifests {
		if n := newest[m.Partition.Index]; n == nil || m.ID > n.ID {
			newest[m.Partition.Index] = m
		}
	}
	for _, m := range newest {
		for _, ob := range m.Objects() {
			if err := stA.Delete(ctx, backup.ChunkKey(ob.SHA256)); err != nil {
				t.Fatal(err)
			}
		}
	}

	if r := runCmd(t, env, backupBin, "restore", "--from", urlA, "--to", filepath.Join(dir, "a-only")); r.code == 0 && !strings.Contains(r.out, "fell back from epoch") {
		t.Fatalf("A alone restored its newest backups without their chunks: exit %d\n%s", r.code, r.out)
	}
	res := mustCmd(t, env, backupBin, "restore", "--from", urlA, "--from", urlB, "--to", filepath.Join(dir, "both"))
	if !strings.Contains(res, "from "+urlB+" that "+urlA+" is missing") || !strings.Contains(res, "read chunks from: "+urlA) {
		t.Fatalf("restore from A and B does not say it read A's lost chunks from B:\n%s", res)
	}
	newestEpoch := newest[0].Epochs.Hi
	for _, m := range newest {
		newestEpoch = min(newestEpoch, m.Epochs.Hi)
	}
	if !strings.Contains(res, "at epoch ") || strings.Contains(res, "fell back from epoch") {
		t.Fatalf("restore from A and B fell back to older backups:\n%s", res)
	}

	// A's bucket is gone altogether: B serves, to a point in time.
	bucketA, prefixA := splitURL(urlA)
	gone := "s3://" + bucketA + "-gone/" + prefixA
	js := mustCmd(t, env, backupBin, "restore", "--from", gone, "--from", urlB, "--to", filepath.Join(dir, "at"), "--at", at.UTC().Format(time.RFC3339Nano), "--json")
	var rj struct {
		Epoch     uint64   `json:"epoch"`
		Fallbacks []string `json:"fallbacks"`
		At        struct {
			Settled bool `json:"settled"`
			Exact   bool `json:"exact"`
		} `json:"at"`
	}
	if i := strings.Index(js, "{\n"); i >= 0 {
		js = js[i:] // notes on stderr come first
	}
	if err := json.Unmarshal([]byte(js), &rj); err != nil || !rj.At.Exact || rj.Epoch == 0 || rj.Epoch >= newestEpoch ||
		!strings.Contains(strings.Join(rj.Fallbacks, "\n"), "location "+gone+" cannot be opened") {
		t.Fatalf("restore --at from a gone A and B: %+v (%v)\n%s", rj, err, js)
	}
	drillLog(t, began, "nothing (A's lost chunks read from B; B alone served once A was gone)")
}
