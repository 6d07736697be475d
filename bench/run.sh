#!/usr/bin/env bash
# Prints flowkeep's performance figures, one benchmark per issue target.
# Usage: bench/run.sh [regexp]   (default: all)
#
# The side-by-side benchmarks (RestoreVerifyPeers, FirstBackupPeers) compare
# with restic and rclone; they are built from the Go module proxy into the
# tools cache on first use (a few minutes), like test.sh's servers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
pattern=${1:-.}
tools="${FLOWKEEP_TOOLS:-$HOME/.cache/flowkeep-tools}"
export PATH="$tools/bin:$PATH"
for spec in versitygw:github.com/versity/versitygw/cmd/versitygw@v1.8.0; do
	name=${spec%%:*}
	if ! command -v "$name" > /dev/null; then
		echo "bench/run.sh: building $name (first run only)" >&2
		GOBIN="$tools/bin" GOFLAGS=-buildvcs=false go install "${spec#*:}"
	fi
done
if [[ "RestoreVerifyPeers" =~ $pattern || "FirstBackupPeers" =~ $pattern ]]; then
	export FLOWKEEP_PEERS="$tools/peers"
	mkdir -p "$FLOWKEEP_PEERS"
	for spec in restic:github.com/restic/restic/cmd/restic@v0.18.1 rclone:github.com/rclone/rclone@v1.76.0; do
		name=${spec%%:*}
		if [ ! -x "$FLOWKEEP_PEERS/$name" ]; then
			echo "bench/run.sh: building $name for the side-by-side benchmark (first run only)" >&2
			GOBIN="$FLOWKEEP_PEERS" GOFLAGS=-buildvcs=false go install "${spec#*:}" ||
				echo "bench/run.sh: could not build $name; its figures are left out" >&2
		fi
	done
fi
go test ./bench -run '^$' -bench "$pattern" -benchtime 1x -timeout 60m 2>&1 | grep -E '^Benchmark|^ok|FAIL|^rounds'
