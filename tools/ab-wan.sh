#!/usr/bin/env bash
# tools/ab-wan.sh — a baseline tpc-xfer against this one through the delay line,
# interleaved round by round: each round runs tools/bench-scenario.sh once with the
# baseline binary (QUIC) and once with this one (QUIC, TCP and the rsync daemon), one
# timed push each, so that the VM's slow and fast minutes fall on all of them alike.
# Prints each push's seconds and, at the end, the median, min and max per tool.
#
#   OLD=/path/to/baseline/tpc-xfer tools/ab-wan.sh wan-0
#   ROUNDS=5 BIG_MB=128 OLD=... tools/ab-wan.sh wan-1
#
# Knobs: ROUNDS=5; NEW=target/release/tpc-xfer; OLD (left out if unset); BIG_MB=256;
# TOOLS (this binary's tools, default "tpc-never tpc-tcp rsyncd"). Every bench-scenario
# run also calibrates the path (ping, iperf3), which is most of its time. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { sed -n '2,13p' "$0"; exit 2; }
SCENARIO=$1
ROUNDS=${ROUNDS:-5}
NEW=${NEW:-target/release/tpc-xfer}
OLD=${OLD:-}
export BIG_MB=${BIG_MB:-256}
NEW_TOOLS=${TOOLS:-tpc-never tpc-tcp rsyncd}
results=$(mktemp)
trap 'rm -f "$results"' EXIT
# one LABEL BINARY TOOLS: one bench-scenario run, one timed push per tool.
one() {
  local label=$1 bin=$2 tools=$3 line tool secs
  while read -r line; do
    tool=${line%%:*}
    secs=${line##*median }
    secs=${secs% s}
    echo "round $r: $label $tool $secs s"
    echo "$label-$tool $secs" >> "$results"
  done < <(RUNS=1 PARTS=big TOOLS="$tools" TPC="$bin" tools/bench-scenario.sh "$SCENARIO" 2>&1 |
    sed -n 's/^  \([a-z-]*: median [0-9.]* s\)$/\1/p')
}
for r in $(seq "$ROUNDS"); do
  [ -z "$OLD" ] || one old "$OLD" tpc-never
  one new "$NEW" "$NEW_TOOLS"
done
python3 - "$results" <<'PY'
import statistics, sys
by = {}
for line in open(sys.argv[1]):
    tool, secs = line.split()
    by.setdefault(tool, []).append(float(secs))
for tool, t in by.items():
    print(f"{tool}: median {statistics.median(t):.3f} s, min {min(t):.3f}, max {max(t):.3f} ({len(t)} runs)")
PY
