#!/usr/bin/env bash
# tools/soak-wan.sh — pushes one file again and again over an emulated WAN path
# (tools/delayline between two namespaces) to catch rare stalls: every push runs with
# the QUIC path trace on (TPC_XFER_TRACE_QUIC) at both ends, a push that passes the
# deadline is stopped and counted as stalled, and the traces of every push are kept.
# Run as root (installs bc if missing). Prints one line per push and a summary; exits 1
# if any push stalled. The generated source and the pushed copy are removed on exit.
# Each push's stdout (its `--json` summary, given COPY_ARGS=--json) goes to push-N.out.
#
#   tools/soak-wan.sh                               # 20 pushes of 1 GiB, 50 ms, 0.1% loss
#   PUSHES=50 LOSS_PCT=1 SIZE_MB=256 tools/soak-wan.sh
#   SRC=/var/tmp/logs COPY_ARGS="--compress never" PUSHES=3 tools/soak-wan.sh
#
# Settings (environment): PUSHES=20 SIZE_MB=1024 (of random data, unless SRC names a
# file to push) DELAY_MS=25 (one way) LOSS_PCT=0.1 RATE_MBIT=1000 MTU=1500 DEADLINE_S=120
# TRACE_S=1 COPY_ARGS="" (more `tpc-xfer copy` flags) OUT=/var/tmp/tpc-soak/<date>
# TPC=target/release/tpc-xfer DELAYLINE=target/release/tpc-delayline
set -euo pipefail
cd "$(dirname "$0")/.."

PUSHES=${PUSHES:-20}
SIZE_MB=${SIZE_MB:-1024}
DELAY_MS=${DELAY_MS:-25}
LOSS_PCT=${LOSS_PCT:-0.1}
RATE_MBIT=${RATE_MBIT:-1000}
MTU=${MTU:-1500}
DEADLINE_S=${DEADLINE_S:-120}
TRACE_S=${TRACE_S:-1}
OUT=${OUT:-/var/tmp/tpc-soak/$(date +%Y%m%d-%H%M%S)}
TPC=${TPC:-$PWD/target/release/tpc-xfer}
DELAYLINE=${DELAYLINE:-$PWD/target/release/tpc-delayline}
NS_A=tpcsoak-a NS_B=tpcsoak-b HOST=10.198.0.2 PORT=7441

die() { echo "soak-wan: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root (it makes network namespaces)"
. tools/need.sh
install_missing bc:bc timeout:coreutils
[ -x "$TPC" ] && [ -x "$DELAYLINE" ] || cargo build --release --quiet --workspace

# The destination is this script's own: an OUT that already has one is refused, since
# it is removed on exit.
[ ! -e "$OUT/dst" ] || die "$OUT/dst already exists; give another OUT"
mkdir -p "$OUT/dst"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  # The data (a generated source and the pushed copy, a GiB each by default) goes; the
  # logs and traces stay.
  [ -n "${SRC:-}" ] || rm -f "$OUT/src.bin"
  rm -rf "$OUT/dst"
}
trap cleanup EXIT

if [ -n "${SRC:-}" ]; then
  src=$SRC
  [ -f "$src" ] || die "SRC=$src is not a file"
  SIZE_MB=$(( $(stat -c %s "$src") >> 20 ))
else
  src=$OUT/src.bin
  head -c "$((SIZE_MB << 20))" /dev/urandom > "$src"
fi

# The delay line makes both namespaces (replacing any left over) and removes them on exit.
"$DELAYLINE" --ns-a "$NS_A" --ns-b "$NS_B" --addr-a 10.198.0.1 --addr-b "$HOST" --delay-ms "$DELAY_MS" \
  --loss-pct "$LOSS_PCT" --rate-mbit "$RATE_MBIT" --mtu "$MTU" --stats "$OUT/delayline.json" \
  2> "$OUT/delayline.log" &
pids+=($!)
for _ in $(seq 100); do [ -f "$OUT/delayline.json" ] && break; sleep 0.1; done
[ -f "$OUT/delayline.json" ] || die "tpc-delayline did not come up: $(cat "$OUT/delayline.log")"

mkdir -m 700 "$OUT/server-state"
"$TPC" id --state "$OUT/client-state" > "$OUT/client-id"
head -n 1 "$OUT/client-id" > "$OUT/server-state/authorized-clients"
TPC_XFER_TRACE_QUIC=$TRACE_S ip netns exec "$NS_B" "$TPC" serve --root "$OUT/dst" \
  --listen "$HOST:$PORT" --state "$OUT/server-state" 2> "$OUT/server.log" &
pids+=($!)
sleep 1
ip netns exec "$NS_A" "$TPC" copy -q --accept-new --state "$OUT/client-state" \
  "$OUT/client-id" "tpc://$HOST:$PORT/probe" || die "probe push failed"

stalled=0
for i in $(seq "$PUSHES"); do
  rm -f "$OUT/dst/big"
  start=$(date +%s.%N)
  mark=$(wc -l < "$OUT/server.log")
  set +e
  TPC_XFER_TRACE_QUIC=$TRACE_S timeout -s KILL "$DEADLINE_S" ip netns exec "$NS_A" \
    "$TPC" copy -q --fsync never ${COPY_ARGS:-} --state "$OUT/client-state" "$src" "tpc://$HOST:$PORT/big" \
    > "$OUT/push-$i.out" 2> "$OUT/push-$i.client.log"
  rc=$?
  set -e
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  tail -n +"$((mark + 1))" "$OUT/server.log" > "$OUT/push-$i.server.log"
  if [ "$rc" = 137 ]; then
    stalled=$((stalled + 1))
    printf 'push %3d: STALLED (stopped after %s s); traces: %s/push-%d.*.log\n' "$i" "$DEADLINE_S" "$OUT" "$i"
  elif [ "$rc" != 0 ]; then
    printf 'push %3d: failed, exit %d after %.1f s (%s/push-%d.client.log)\n' "$i" "$rc" "$secs" "$OUT" "$i"
  else
    printf 'push %3d: %.1f s, %.0f Mbit/s\n' "$i" "$secs" "$(echo "$SIZE_MB * 8 * 1.048576 / $secs" | bc -l)"
  fi
done
echo "soak-wan: $stalled of $PUSHES pushes stalled (delay ${DELAY_MS} ms one way, loss ${LOSS_PCT}%, ${RATE_MBIT} Mbit/s, MTU $MTU); logs in $OUT"
[ "$stalled" = 0 ]
