package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dockerfile is the repository's Dockerfile as stages of instructions.
type stage struct {
	from, name string
	lines      []string // instructions after FROM, continuation lines joined
}

func dockerfile(t *testing.T) (string, []stage) {
	t.Helper()
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatalf("no Dockerfile builds the image the manifests run: %v", err)
	}
	var stages []stage
	joined := strings.ReplaceAll(string(b), "\\\n", " ")
	for _, l := range strings.Split(joined, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		if strings.EqualFold(f[0], "FROM") {
			s := stage{from: f[1]}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				s.name = f[3]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if !strings.EqualFold(f[0], "ARG") {
				t.Fatalf("Dockerfile: %q before the first FROM", l)
			}
			continue
		}
		stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, l)
	}
	return string(b), stages
}

// The Dockerfile builds the image every manifest names, with the Go of
// go.mod, copies exactly the binaries `go build ./cmd/...` makes (and the
// manifests run), and runs them as a user that is not root. It is checked
// statically: docker cannot run here.
func TestDockerfile_BuildsTheImageTheManifestsRun(t *testing.T) {
	text, stages := dockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build (build, then a small runtime base): %d stages", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	// The Go version is go.mod's.
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(string(mod))[1]
	if !strings.HasPrefix(build.from, "golang:"+goVersion) {
		t.Errorf("the build stage is FROM %s, want golang:%s (go.mod's go line)", build.from, goVersion)
	}
	if strings.HasPrefix(final.from, "golang:") {
		t.Errorf("the runtime stage is FROM %s: want a small base, not the toolchain", final.from)
	}
	// The build stage builds every command in cmd/, statically.
	var buildCmd string
	for _, l := range build.lines {
		if strings.HasPrefix(l, "RUN ") && strings.Contains(l, "go build") {
			buildCmd = l
		}
	}
	if !strings.Contains(buildCmd, "./cmd/...") || !strings.Contains(buildCmd, "CGO_ENABLED=0") {
		t.Fatalf("the build stage must build ./cmd/... without cgo (a static binary for a base without libc): %q", buildCmd)
	}
	out := regexp.MustCompile(`-o (\S+)/ `).FindStringSubmatch(buildCmd + " ")
	if out == nil {
		t.Fatalf("the build writes its binaries where? %q", buildCmd)
	}
	list, err := exec.Command("go", "list", "-f", "{{if eq .Name \"main\"}}{{.ImportPath}}{{end}}", "../cmd/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	var bins []string
	for _, p := range strings.Fields(string(list)) {
		bins = append(bins, filepath.Base(p))
	}
	slices.Sort(bins)
	// The runtime stage copies those binaries from the build onto PATH.
	var copied []string
	for _, l := range final.lines {
		f := strings.Fields(l)
		if f[0] != "COPY" || len(f) < 4 || f[1] != "--from="+build.name {
			continue
		}
		dest := f[len(f)-1]
		if dest != "/usr/local/bin/" {
			t.Errorf("binaries go to %s, want /usr/local/bin/ (on the base's PATH: the manifests run them by name)", dest)
		}
		for _, src := range f[2 : len(f)-1] {
			if filepath.Dir(src) != out[1] {
				t.Errorf("COPY %s: not from the build's output %s", src, out[1])
			}
			copied = append(copied, filepath.Base(src))
		}
	}
	slices.Sort(copied)
	if !slices.Equal(copied, bins) {
		t.Errorf("the image copies %v; go build ./cmd/... makes %v", copied, bins)
	}
	// Not root at run time: a numeric user, the manifests' runAsUser.
	user := ""
	for _, l := range final.lines {
		if f := strings.Fields(l); f[0] == "USER" {
			user = f[1]
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if user == "" || uid == "0" || uid == "root" || !regexp.MustCompile(`^[0-9]+$`).MatchString(uid) {
		t.Errorf("the image runs as %q: want a numeric user that is not root", user)
	}
	// The image the Dockerfile says it builds is the one every manifest
	// runs, and every manifest runs a binary the image has, as its user.
	tag := regexp.MustCompile(`docker build -t (\S+) \.`).FindStringSubmatch(text)
	if tag == nil {
		t.Fatal("the Dockerfile does not say which image it builds (docker build -t IMAGE .)")
	}
	manifests, _ := filepath.Glob("kubernetes/*.yaml")
	images := regexp.MustCompile(`(?m)^\s*image:\s*(\S+)`)
	commands := regexp.MustCompile(`(?m)^\s*command:\s*\["([^"]+)"`)
	runAs := regexp.MustCompile(`(?m)^\s*runAsUser:\s*(\d+)`)
	n := 0
	for _, mf := range manifests {
		b, _ := os.ReadFile(mf)
		for _, m := range images.FindAllStringSubmatch(string(b), -1) {
			n++
			if m[1] != tag[1] {
				t.Errorf("%s runs image %s; the Dockerfile builds %s", mf, m[1], tag[1])
			}
		}
		for _, m := range commands.FindAllStringSubmatch(string(b), -1) {
			if !slices.Contains(bins, m[1]) {
				t.Errorf("%s runs %s, which the image does not have", mf, m[1])
			}
		}
		for _, m := range runAs.FindAllStringSubmatch(string(b), -1) {
			if m[1] != uid {
				t.Errorf("%s runs as user %s, the image as %s", mf, m[1], uid)
			}
		}
	}
	if n == 0 {
		t.Fatal("no manifest names an image")
	}
}
