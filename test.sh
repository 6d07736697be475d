#!/usr/bin/env bash
# Runs every flowkeep test: installs the real servers and tools the tests use
# (versitygw, fake-gcs-server, staticcheck, and promtool for the alert rules'
# tests) from the Go module proxy into a cache directory if they are missing,
# and Debian's systemd for systemd-analyze (the deploy units' check) when it
# is missing and this runs as root, then runs the Go tests and checks.
# The Terraform modules are checked in Go (terraform/), formatting included,
# so no terraform or tflint binary is needed.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/local/go/bin"
tools="${FLOWKEEP_TOOLS:-$HOME/.cache/flowkeep-tools}"
mkdir -p "$tools/bin"
began=$SECONDS

install() { # name module@version: go install into its own versioned directory
	local name=$1 mod=$2
	local dir="$tools/${mod//[\/@]/_}"
	if [ ! -x "$dir/$name" ]; then
		echo "test.sh: building $mod (first run only)" >&2
		GOBIN="$dir" GOFLAGS=-buildvcs=false go install "$mod"
		echo "test.sh: built $name in $((SECONDS - began))s" >&2
	fi
	ln -sfn "$dir/$name" "$tools/bin/$name"
}
# On a fresh machine most of the run is compiling (measured on 2 cores:
# this module's test binaries about 590 CPU-seconds, their race builds
# 200, versitygw and fake-gcs-server 490, the tests themselves about 760).
# The tools build in the background from the start while this module
# compiles and the tests that need no server run; only the packages that
# start the servers, and the drills, wait for them. (Building the tools
# after this module's compile, to share its compiled dependencies, saved
# 130 of their CPU-seconds but ended the run later.)
# promtool runs the alert rules' tests (deploy/prometheus/*_test.yaml).
# Debian's prometheus package carries it: its binary is taken out of the
# package (nothing installed, no service started), seconds instead of the
# largest build here (about 15 CPU-minutes); without apt, it is built.
promtool_debian() {
	local dir="$tools/promtool-debian"
	if [ ! -x "$dir/usr/bin/promtool" ]; then
		mkdir -p "$dir/deb" &&
			( cd "$dir/deb" && { apt-get download prometheus > /dev/null 2>&1 ||
				{ [ "$(id -u)" = 0 ] && apt-get update -qq > /dev/null 2>&1 && apt-get download prometheus > /dev/null 2>&1; }; } ) &&
			dpkg -x "$dir"/deb/prometheus_*.deb "$dir" || return 1
	fi
	ln -sfn "$dir/usr/bin/promtool" "$tools/bin/promtool"
}
get_promtool() {
	[ -x "$tools/bin/promtool" ] && return 0
	{ command -v apt-get > /dev/null && promtool_debian; } ||
		install promtool github.com/prometheus/prometheus/cmd/promtool@v0.316.0
}
servers=()
get_promtool & servers+=($!)
# deploy/ verifies its units with systemd-analyze and skips, saying so,
# where it cannot be had.
if ! command -v systemd-analyze > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
	( echo "test.sh: installing systemd (for systemd-analyze)" >&2
	  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd; } > /dev/null 2>&1; then
		echo "test.sh: could not install systemd: the deploy units' checks will skip" >&2
	  fi ) & servers+=($!)
fi
export PATH="$tools/bin:$PATH"
export FLOWKEEP_REQUIRE_SERVERS=1

install versitygw github.com/versity/versitygw/cmd/versitygw@v1.8.0 & servers+=($!)
install fake-gcs-server github.com/fsouza/fake-gcs-server@v1.56.1 & servers+=($!)
install staticcheck honnef.co/go/tools/cmd/staticcheck@v0.8.2 & lint=$!
# While tools build (minutes on a fresh machine), say so now and then.
( while sleep 60; do
	for p in "${servers[@]}" "$lint"; do
		if kill -0 "$p" 2>/dev/null; then echo "test.sh: the tools are still building ($((SECONDS - began))s)" >&2; break; fi
	done
done ) & ticker=$!
trap 'kill "$ticker" 2>/dev/null || true' EXIT

echo "test.sh: gofmt, go vet" >&2
# Untracked files too: a new file must not pass here and fail on a clean clone.
bad=$(gofmt -l $(git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad" >&2; exit 1; fi
go vet ./...

# The packages whose tests start the S3 and GCS servers, or run promtool
# and systemd-analyze, wait for them; the others run now.
needs_servers='/(backup/s3|backup/gcs|backup/storeurl|cmd/flowbackup|deploy|integration)$'
echo "test.sh: go test (packages that need no server)" >&2
go test -count=1 -timeout 30m $(go list ./... | grep -Ev "$needs_servers")

# The runtime's concurrent parts under the race detector.
echo "test.sh: go test -race (core, recovery, connectors, mesh)" >&2
go test -race -short -count=1 -timeout 20m ./core/... ./recovery/... ./connect/... ./internal/mesh/...

# Each fuzz target runs briefly beyond its seed corpus (which go test ran).
echo "test.sh: fuzzing (5s per target)" >&2
for spec in backup:FuzzParseManifest backup:FuzzParseManifestKey backup:FuzzLoadCatalog backup:FuzzLockObject backup:FuzzDecompress \
	internal/mesh:FuzzDispatch core:FuzzWireDecode core:FuzzClusterFrames recovery/clustered:FuzzPeerMessages; do
	# A finding fails the run (Go writes the input under testdata/fuzz/). The
	# fuzzing engine itself can stall on a loaded machine ("fuzzing process
	# hung or terminated unexpectedly"): that, and only that, is retried once.
	for try in 1 2; do
		if out=$(go test -run '^$' -fuzz "^${spec#*:}\$" -fuzztime 5s "./${spec%%:*}" 2>&1); then
			break
		fi
		if [ "$try" = 2 ] || grep -q 'Failing input written' <<< "$out"; then
			echo "$out" >&2
			echo "test.sh: fuzzing ${spec} failed" >&2
			exit 1
		fi
		echo "test.sh: fuzzing ${spec} stopped without a finding; once more:" >&2
		tail -5 <<< "$out" >&2
	done
done

wait "$lint"
echo "test.sh: staticcheck" >&2
staticcheck ./...
for p in "${servers[@]}"; do wait "$p"; done
kill "$ticker" 2>/dev/null || true

echo "test.sh: go test (packages that start the servers)" >&2
go test -count=1 -timeout 30m $(go list ./... | grep -E "$needs_servers" | grep -v '/integration$')

# The drills print what each lost (must be nothing) and its wall time.
echo "test.sh: disaster-recovery drills (integration/)" >&2
log=$(mktemp)
if go test -count=1 -timeout 15m -v ./integration > "$log" 2>&1; then
	grep -E 'lost |^ok' "$log" | sed 's/^ *//'
	rm -f "$log"
else
	cat "$log"
	rm -f "$log"
	exit 1
fi
