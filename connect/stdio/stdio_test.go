package stdio

import (
	"bytes"
	"context"
	"testing"

	"github.com/flowkeep/flowkeep/core"
)

// Written lines reach standard output at Flush, before the epoch commits.
func TestStdout_FlushShowsLinesBeforeCommit(t *testing.T) {
	ctx := context.Background()
	var out bytes.Buffer
	p, err := Stdout{W: &out}.Open(ctx, "stdout", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(ctx, []string{"a", "b"})
	if out.Len() != 0 {
		t.Fatalf("written before Flush: %q (the buffer is expected to hold them)", out.String())
	}
	if err := p.(core.Flusher).Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if out.String() != "a\nb\n" {
		t.Fatalf("after Flush stdout holds %q", out.String())
	}
	p.Write(ctx, []string{"c"})
	if _, err := p.Commit(ctx, 1); err != nil || out.String() != "a\nb\nc\n" {
		t.Fatalf("after Commit stdout holds %q (%v)", out.String(), err)
	}
	p.Close(ctx)
}
