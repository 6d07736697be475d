#!/usr/bin/env bash
# Builds flowrun and flowbackup into ${1:-bin}/, stamping the VCS revision
# into them (flowrun version, flowbackup version, every manifest) even where
# Go's own stamping is off (GOFLAGS=-buildvcs=false, a tree without .git).
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/local/go/bin"
out="${1:-bin}"
rev="${FLOWKEEP_REVISION:-$(git rev-parse HEAD 2>/dev/null || true)}"
if [ -n "$rev" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
	rev="$rev-modified"
fi
flags="-X github.com/flowkeep/flowkeep/internal/version.Revision=${rev}"
mkdir -p "$out"
go build -ldflags "$flags" -o "$out/flowrun" ./cmd/flowrun
go build -ldflags "$flags" -o "$out/flowbackup" ./cmd/flowbackup
