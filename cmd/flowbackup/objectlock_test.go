package main

import (
	"os"
	"strings"
	"testing"
)

// --object-lock is refused, exit 3 and nothing written, where it cannot be
// honoured or would be defeated: a file:// location (no object lock), a
// bad MODE:DURATION, an agent that would prune its own locked backups;
// undelete has nothing to do on file://.
func TestCLI_ObjectLockRefusals(t *testing.T) {
	rec := flowDir(t, "5s")
	bucket := t.TempDir()
	to := "file://" + bucket
	for _, tt := range []struct {
		name string
		args []string
		msg  string
	}{
		{"file:// cannot lock", []string{"backup", "-r", rec, "--to", to, "--object-lock", "GOVERNANCE:30d"}, "cannot lock objects"},
		{"agent on file://", []string{"agent", "-r", rec, "--to", to, "--schedule", "@every 1h", "--object-lock", "COMPLIANCE:7d"}, "cannot lock objects"},
		{"unknown mode", []string{"backup", "-r", rec, "--to", to, "--object-lock", "LEGAL:30d"}, "GOVERNANCE or COMPLIANCE"},
		{"no duration", []string{"backup", "-r", rec, "--to", to, "--object-lock", "GOVERNANCE"}, "MODE:DURATION"},
		{"bad duration", []string{"agent", "-r", rec, "--to", to, "--schedule", "@every 1h", "--object-lock", "GOVERNANCE:a month"}, "duration"},
		{"agent prunes locked backups", []string{"agent", "-r", rec, "--to", to, "--schedule", "@every 1h", "--object-lock", "GOVERNANCE:30d", "--keep-last", "3"}, "separate prune identity"},
		{"undelete on file://", []string{"undelete", "--from", to}, "nothing to undelete"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, backupBin, tt.args...)
			if code != 3 || !strings.Contains(out, tt.msg) {
				t.Fatalf("exit %d, output:\n%s\nwant exit 3 and %q", code, out, tt.msg)
			}
		})
	}
	if ents, _ := os.ReadDir(bucket); len(ents) != 0 {
		t.Fatalf("refused commands wrote %d entries into the location", len(ents))
	}
}
