package recovery

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A partition on a full disk fails the run with an error that names the
// partition's file and directory and says what to do.
func TestCommit_DiskFullSaysWhereAndWhatToDo(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v: %s): this test needs root", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	if err := Init(context.Background(), mnt, 1); err != nil {
		t.Fatal(err)
	}
	st := openStore(t, mnt, time.Second, 0)
	if _, err := st.Begin(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	value := []byte(strings.Repeat("x", 4000))
	var err error
	for e := Epoch(1); e < 2000 && err == nil; e++ {
		rows := make([]Row, 50)
		for i := range rows {
			rows[i] = Row{Step: "s", Key: StateKey(fmt.Sprint(e, "/", i)), Epoch: e, Value: value}
		}
		if err = st.Commit(context.Background(), 0, e+1, rows); err == nil {
			err = st.WaitDurable(context.Background(), e+1)
		}
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		t.Fatal("10 MB went into a 1 MB disk")
	}
	for _, want := range []string{"part-0.sqlite3", "the disk holding " + mnt + " is full", "run again with the same -r"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
	}
}
