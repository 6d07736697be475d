#!/usr/bin/env bash
# The main job on the embedded default: local file:// storage, no cloud
# credentials. Runs wordcount with recovery on the sample input, backs the
# partitions up, "loses the machine" (deletes the recovery directory),
# restores onto a new directory with another worker count, and continues
# with appended input. Everything lives under ${FLOWKEEP_DEMO_DIR:-a temp dir}.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/local/go/bin"
work="${FLOWKEEP_DEMO_DIR:-$(mktemp -d)}"
mkdir -p "$work/bin" "$work/backups"
./build.sh "$work/bin"
flowrun="$work/bin/flowrun" flowbackup="$work/bin/flowbackup"
cp testdata/sample.txt "$work/input.txt"
rm -rf "$work/rec" "$work/restored" "$work/counts.csv"
mkdir -p "$work/rec"

step() { printf '\n== %s\n' "$*"; }
step "create 4 recovery partitions"
"$flowrun" recovery init "$work/rec" 4
step "run wordcount with 2 workers, snapshotting every second"
"$flowrun" run wordcount -i "$work/input.txt" -o "$work/counts.csv" -w 2 -r "$work/rec" -s 1s -b 1m
step "back up every partition to file://$work/backups"
"$flowbackup" backup -r "$work/rec" --to "file://$work/backups"
"$flowbackup" verify --from "file://$work/backups"
step "the machine is lost: delete the recovery directory"
rm -rf "$work/rec"
step "restore onto a new directory"
"$flowbackup" restore --from "file://$work/backups" --to "$work/restored"
step "more input arrives; continue with 3 workers on the restored partitions"
echo "The restored flow counts only what is new: snapshots survive losing their machine." >> "$work/input.txt"
"$flowrun" run wordcount -i "$work/input.txt" -o "$work/counts.csv" -w 3 -r "$work/restored" -s 1s -b 1m
step "totals (each word's last line): the top ten"
awk -F, '{c[$1]=$2} END {for (w in c) print c[w], w}' "$work/counts.csv" | sort -rn | head -10
echo
echo "demo files are in $work"
