package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/testserver"
)

// Drill 11: someone with the agent's credentials, or more, tries to wipe
// an object-locked location (versitygw with a versioned bucket created
// with Object Lock, as S3 Object Lock needs). A prune with the agent's
// credentials deletes nothing locked (it keeps and reports the backup its
// policy would drop); a raw DELETE of every object only stacks delete
// markers on the locked versions, and a DELETE of each version is refused
// for every locked one; flowbackup undelete makes them current again, and
// a restore continues the flow to exactly the output of a run that was
// never interrupted.
func TestDrill11_ObjectLockSurvivesAWipe(t *testing.T) {
	srv, err := testserver.StartVersityVersioned()
	if err != nil {
		testserver.Missing(t, err)
	}
	t.Cleanup(srv.Stop)
	lb := backend{name: "s3-object-lock", addr: srv.Addr,
		env: func(addr string) []string {
			return append(srv.S3Env(), "FLOWKEEP_S3_ENDPOINT=http://"+addr, "FLOWKEEP_S3_PATH_STYLE=true")
		}}
	for _, tc := range []struct {
		b    backend
		mode string
	}{{lb, "COMPLIANCE"}, {signed(sealed(lb)), "GOVERNANCE"}} {
		t.Run(tc.b.name+"/"+tc.mode, func(t *testing.T) { lockDrill(t, srv, tc.b, tc.mode) })
	}
}

func lockDrill(t *testing.T, srv *testserver.Server, b backend, mode string) {
	ctx := context.Background()
	began := time.Now()
	dir := t.TempDir()
	env := b.env(b.addr)
	bucket := testserver.NewName("drill-lock")
	if err := srv.CreateS3LockBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	const prefix = "flows/wc"
	url := "s3://" + bucket + "/" + prefix
	parts := []string{filepath.Join(dir, "p1.txt"), filepath.Join(dir, "p2.txt"), filepath.Join(dir, "p3.txt")}
	for i, p := range parts {
		appendWords(t, p, 20_000, 3000, int64(i+1))
	}
	pass := func(in, out, rec string) {
		mustCmd(t, nil, flowrunBin, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "100ms", "-b", "3s", "-w", "2")
	}
	// The uninterrupted baseline: three passes over a growing input.
	base := filepath.Join(dir, "base")
	initRec(t, base, 4)
	baseIn, baseOut := filepath.Join(dir, "base-in.txt"), filepath.Join(dir, "base-out.csv")
	for _, p := range parts {
		appendFile2(t, baseIn, p)
		pass(baseIn, baseOut, base)
	}
	want, _ := os.ReadFile(baseOut)

	// The incident: two passes, each backed up with a lock.
	rec := filepath.Join(dir, "rec")
	initRec(t, rec, 4)
	in, out := filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	lock := mode + ":1h"
	for _, p := range parts[:2] {
		appendFile2(t, in, p)
		pass(in, out, rec)
		mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url, "--object-lock", lock)
	}
	raw, err := srv.S3Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := lockedVersions(t, raw, bucket, prefix)
	if before[backup.ChunksPrefix] == 0 || before[backup.ManifestsPrefix] != 8 || before[backup.LineagesPrefix] == 0 {
		t.Fatalf("locked versions after two backups of 4 partitions: %v; want chunks, 8 manifests and registry events", before)
	}

	// The agent's credentials: its prune (--keep-last 1 would drop the
	// first backup) deletes nothing locked, and says what it kept.
	pr := mustCmd(t, env, backupBin, "prune", "--from", url, "--keep-last", "1", "--json")
	var res struct {
		Deleted []string  `json:"deleted_backups"`
		Locked  []string  `json:"locked_backups"`
		Objects int       `json:"locked_objects"`
		Until   time.Time `json:"locked_until"`
	}
	if err := json.Unmarshal([]byte(pr[strings.Index(pr, "{"):]), &res); err != nil {
		t.Fatalf("prune --json: %v\n%s", err, pr)
	}
	if len(res.Deleted) != 0 || len(res.Locked) != 4 || res.Objects < 4 || res.Until.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("prune under lock: deleted %v, locked %v (%d objects until %s); want nothing deleted, the first backup's 4 manifests kept for their lock",
			res.Deleted, res.Locked, res.Objects, res.Until)
	}

	// A raw wipe: DELETE every object, then every version.
	var current []string
	pg := awss3.NewListObjectsV2Paginator(raw, &awss3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix + "/")})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			current = append(current, aws.ToString(o.Key))
		}
	}
	for _, k := range current {
		if _, err := raw.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(k)}); err != nil {
			t.Fatalf("a plain DELETE of %s: %v (in a versioned bucket it stacks a delete marker)", k, err)
		}
	}
	refused := 0
	forEachVersion(t, raw, bucket, prefix, func(key, id string) {
		_, err := raw.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), VersionId: aws.String(id)})
		var ae smithy.APIError
		switch {
		case err == nil:
			if isLockedPrefix(strings.TrimPrefix(key, prefix+"/")) {
				t.Errorf("deleted version %s of locked object %s", id, key)
			}
		case errors.As(err, &ae) && ae.ErrorCode() == "AccessDenied":
			refused++
		default:
			t.Fatalf("delete version %s of %s: %v", id, key, err)
		}
	})
	after := lockedVersions(t, raw, bucket, prefix)
	if fmt.Sprint(after) != fmt.Sprint(before) || refused == 0 {
		t.Fatalf("after the wipe: locked versions %v (before %v), %d deletions refused", after, before, refused)
	}
	os.RemoveAll(rec)
	target := filepath.Join(dir, "restored")
	if r := runCmd(t, env, backupBin, "restore", "--from", url, "--to", target); r.code == 0 {
		t.Fatalf("the wiped location still restored before undelete: the wipe did not hide anything:\n%s", r.out)
	}
	os.RemoveAll(target)

	// Recovery: undelete, restore, continue.
	ud := mustCmd(t, env, backupBin, "undelete", "--from", url)
	if !strings.Contains(ud, "current again") {
		t.Fatalf("undelete:\n%s", ud)
	}
	mustCmd(t, env, backupBin, "verify", "--from", url, "--deep")
	rs := mustCmd(t, env, backupBin, "restore", "--from", url, "--to", target)
	appendFile2(t, in, parts[2])
	pass(in, out, target)
	got, _ := os.ReadFile(out)
	if diff := sameWordcountOutput(got, want); len(want) == 0 || diff != "" {
		t.Fatalf("output after the wipe, undelete and restore differs from the uninterrupted run: %s\nrestore said:\n%s", diff, rs)
	}
	drillLog(t, began, fmt.Sprintf("nothing (%d deletions of locked versions refused; %s; output identical)", refused, firstLine(ud)))
}

func appendFile2(t *testing.T, dst, src string) {
	t.Helper()
	if _, err := os.Stat(dst); err != nil {
		os.WriteFile(dst, nil, 0o644)
	}
	appendFile(t, dst, src)
}

func isLockedPrefix(key string) bool {
	for _, p := range []string{backup.ChunksPrefix, backup.ManifestsPrefix, backup.LineagesPrefix} {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// forEachVersion calls fn for every object version (not delete markers)
// under prefix.
func forEachVersion(t *testing.T, c *awss3.Client, bucket, prefix string, fn func(key, id string)) {
	t.Helper()
	p := awss3.NewListObjectVersionsPaginator(c, &awss3.ListObjectVersionsInput{Bucket: aws.String(bucket), Prefix: aws.String(prefix + "/")})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range page.Versions {
			fn(aws.ToString(v.Key), aws.ToString(v.VersionId))
		}
	}
}

// lockedVersions counts the versions under each locked prefix that are
// under a lock now.
func lockedVersions(t *testing.T, c *awss3.Client, bucket, prefix string) map[string]int {
	t.Helper()
	out := map[string]int{}
	forEachVersion(t, c, bucket, prefix, func(key, id string) {
		k := strings.TrimPrefix(key, prefix+"/")
		if !isLockedPrefix(k) {
			return
		}
		r, err := c.GetObjectRetention(context.Background(), &awss3.GetObjectRetentionInput{Bucket: aws.String(bucket), Key: aws.String(key), VersionId: aws.String(id)})
		if err != nil || r.Retention == nil || r.Retention.RetainUntilDate == nil || !r.Retention.RetainUntilDate.After(time.Now()) {
			t.Errorf("version %s of %s is not locked: %v", id, key, err)
			return
		}
		top, _, _ := strings.Cut(k, "/")
		out[top+"/"]++
	})
	return out
}

// The same backups on GCS (fake-gcs-server stores object retentions but
// does not enforce them, so no wipe here: a retained object can be
// neither deleted nor replaced on GCS, and memstore's unit tests hold
// that): every chunk, manifest and registry event carries its retention,
// a prune with the agent's credentials keeps and reports the locked
// backup its policy would drop, and the location restores.
func TestDrill11_ObjectRetentionOnGCS(t *testing.T) {
	b := backends(t)[1]
	ctx := context.Background()
	dir := t.TempDir()
	env := b.env(b.addr)
	url := b.newURL(t)
	rec, in, out := filepath.Join(dir, "rec"), filepath.Join(dir, "in.txt"), filepath.Join(dir, "out.csv")
	initRec(t, rec, 2)
	for i := 0; i < 2; i++ {
		appendWords(t, in, 5_000, 2000, int64(i+1))
		mustCmd(t, nil, flowrunBin, "run", "wordcount", "-i", in, "-o", out, "-r", rec, "-s", "100ms", "-b", "3s")
		mustCmd(t, env, backupBin, "backup", "-r", rec, "--to", url, "--object-lock", "GOVERNANCE:2h")
	}
	s := b.open(t, url)
	counts := map[string]int{}
	err := s.List(ctx, "", "", func(oi backup.ObjectInfo) error {
		top, _, _ := strings.Cut(oi.Key, "/")
		locked := oi.Retention.Holds(time.Now().Add(time.Hour)) && oi.Retention.Mode == backup.LockGovernance
		if isLockedPrefix(oi.Key) != locked {
			t.Errorf("%s: retention %+v", oi.Key, oi.Retention)
		}
		counts[top]++
		return nil
	})
	if err != nil || counts["chunks"] == 0 || counts["manifests"] != 4 || counts["lineages"] == 0 {
		t.Fatalf("objects %v, %v", counts, err)
	}
	pr := mustCmd(t, env, backupBin, "prune", "--from", url, "--keep-last", "1")
	if !strings.Contains(pr, "under object lock") || !strings.Contains(pr, "deleted 0 backups") {
		t.Fatalf("prune under lock:\n%s", pr)
	}
	mustCmd(t, env, backupBin, "restore", "--from", url, "--to", filepath.Join(dir, "restored"))
}
