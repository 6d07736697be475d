#!/usr/bin/env bash
# Prints flowkeep's performance figures, one benchmark per issue target.
# Usage: bench/run.sh [regexp]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
pattern=${1:-.}
go test ./bench -run '^$' -bench "$pattern" -benchtime 1x -timeout 60m | grep -E '^Benchmark|^ok|FAIL'
