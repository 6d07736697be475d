// Package version says which flowkeep build is running: the module version
// and the VCS revision Go stamps into binaries.
package version

import (
	"runtime/debug"
	"strings"
)

// Revision is the VCS revision the build scripts stamp in (go build
// -ldflags "-X github.com/flowkeep/flowkeep/internal/version.Revision=$(git
// rev-parse HEAD)"), for builds where Go's own VCS stamping is off (-buildvcs=false,
// a source tree without .git, a container build).
var Revision string

// String is "v1.2.3", or for a build from a checkout "devel (rev 1a2b3c4d5e6f,
// modified)", or "devel" when nothing recorded the revision.
func String() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{}
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
	if rev == "" {
		rev, _ = strings.CutSuffix(Revision, "-modified")
		if rev != Revision {
			modified = "true"
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
