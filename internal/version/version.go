// Package version says which flowkeep build is running: the module version
// and the VCS revision Go stamps into binaries.
package version

import (
	"runtime/debug"
	"strings"
)

// String is "v1.2.3", or for a build from a checkout "devel (rev 1a2b3c4d5e6f,
// modified)", or "devel" when Go recorded nothing.
func String() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev != "" && !strings.Contains(v, rev[:min(12, len(rev))]) {
		v += " (rev " + rev[:min(12, len(rev))]
		if modified == "true" {
			v += ", modified"
		}
		v += ")"
	}
	return v
}
