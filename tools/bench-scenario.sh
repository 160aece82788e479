#!/usr/bin/env bash
# tools/bench-scenario.sh — one named network scenario end to end: builds what is missing,
# sets up the path (veth LAN, or two namespaces joined by tools/delayline), calibrates
# it, runs tpc-xfer and the peers side by side (tools/bench-remote.sh) and prints the
# tables PERFORMANCE.md quotes; raw results and report.json go to
# $BENCH_DIR/results/<date>-<commit>/. Run as root on Debian (installs the peers).
#
#   tools/bench-scenario.sh lan          # veth pair, MTU 9000, no impairment
#   tools/bench-scenario.sh wan-1        # 1 Gbit/s, 50 ms RTT, 1% loss
#   tools/bench-scenario.sh list         # every scenario and what it sets
#
# Anything bench-remote.sh reads (RUNS, BIG_MB, TOOLS, PARTS, ...) may be set in the
# environment to override the scenario's choice, e.g. RUNS=7 BIG_MB=1024.
set -euo pipefail
cd "$(dirname "$0")/.."

# name | settings | what it is
SCENARIOS=(
  "lan|NET=lan PARTS='ceiling big small' BIG_MB=2048|veth pair, MTU 9000, no impairment"
  "wan-0|NET=wan DELAY_MS=25 LOSS_PCT=0 RATE_MBIT=1000|1 Gbit/s, 50 ms RTT, no loss"
  "wan-0.1|NET=wan DELAY_MS=25 LOSS_PCT=0.1 RATE_MBIT=1000|1 Gbit/s, 50 ms RTT, 0.1% loss"
  "wan-1|NET=wan DELAY_MS=25 LOSS_PCT=1 RATE_MBIT=1000|1 Gbit/s, 50 ms RTT, 1% loss"
  "lfn|NET=wan DELAY_MS=50 LOSS_PCT=0 RATE_MBIT=1000|long fat pipe: 1 Gbit/s, 100 ms RTT, no loss"
)
# WAN defaults: the file moves in tens of seconds even for the slowest peer at 1% loss.
WAN_DEFAULTS="PARTS='ceiling big' BIG_MB=512 TOOLS='tpc-never scp rsync-ssh rsyncd' SETTLE=0"

usage() {
  echo "usage: tools/bench-scenario.sh NAME   (NAME: list, or one of the scenarios below)" >&2
  for s in "${SCENARIOS[@]}"; do
    IFS='|' read -r name settings what <<< "$s"
    printf '  %-8s %s\n           %s\n' "$name" "$what" "$settings" >&2
  done
  exit 2
}

[ $# -eq 1 ] || usage
[ "$1" = list ] && usage
for s in "${SCENARIOS[@]}"; do
  IFS='|' read -r name settings _ <<< "$s"
  [ "$name" = "$1" ] || continue
  [[ $settings == NET=wan* ]] && settings="$WAN_DEFAULTS $settings"
  # The scenario's settings, then the caller's environment over them.
  eval "declare -A chosen=(); for kv in $settings; do chosen[\${kv%%=*}]=\${kv#*=}; done"
  for key in "${!chosen[@]}"; do
    [ -n "${!key:-}" ] || export "$key=${chosen[$key]}"
  done
  [ -x target/release/tpc-xfer ] && [ -x target/release/tpc-delayline ] ||
    cargo build --release --quiet --workspace
  exec tools/bench-remote.sh
done
echo "bench-scenario: unknown scenario '$1'" >&2
usage
