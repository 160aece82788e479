#!/usr/bin/env bash
# The portable driver against the io_uring driver, side by side in one run (issue 5):
# a local copy and a push over QUIC on loopback of the 2 GiB random file and of the
# 20,000-file tree, median of RUNS with a warm page cache, durable (the default --fsync).
# Prints a markdown table (as quoted in PERFORMANCE.md) and writes it, with hyperfine's
# JSON, under $BENCH_DIR/results/drivers-DATE-COMMIT/.
#
#   tools/bench-drivers.sh               # 5 runs each
#   RUNS=3 BIG_MB=256 SMALL_COUNT=2000 tools/bench-drivers.sh    # a quick look
#
# CPU seconds are the client's (hyperfine) plus, for a push, the server's, read from
# /proc before and after; both are per run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
BIG_MB=${BIG_MB:-2048}
SMALL_COUNT=${SMALL_COUNT:-20000}
BENCH_DIR=${BENCH_DIR:-/var/tmp/tpc-bench-remote}
# ext4 without a journal (as on the dev VM) skips inodes freed in the last 60 s when it
# allocates; after deleting a tree, wait so one case does not pay for another's cleanup.
SETTLE=${SETTLE:-70}

need=()
for tool in hyperfine:hyperfine python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}"
fi
cargo build --release --quiet
TPC=$PWD/target/release/tpc-xfer
DATA=$BENCH_DIR/data
BIG=$DATA/random-${BIG_MB}m
SMALL=$DATA/small-$SMALL_COUNT
python3 tools/gen-dataset.py "$DATA" "random-${BIG_MB}m" "small-$SMALL_COUNT"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
RES=$BENCH_DIR/results/drivers-$(date +%Y%m%d-%H%M%S)-$COMMIT
RUN=$(mktemp -d "$BENCH_DIR/drivers.XXXXXX") # keys, server roots, local outputs
mkdir -p "$RES"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# One server per driver, same key, on 127.0.0.1; the client is authorized by both.
"$TPC" id --state "$RUN/server-state" >/dev/null
"$TPC" id --state "$RUN/client-state" >"$RUN/server-state/authorized-clients"
declare -A PORT PID
port=7700
for io in uring portable; do
  mkdir -p "$RUN/root-$io"
  "$TPC" serve --io "$io" --root "$RUN/root-$io" --listen "127.0.0.1:$port" \
    --state "$RUN/server-state" 2>"$RUN/serve-$io.log" &
  PID[$io]=$!
  PIDS+=($!)
  PORT[$io]=$port
  port=$((port + 10))
done
sleep 1
for io in uring portable; do
  kill -0 "${PID[$io]}" 2>/dev/null || { cat "$RUN/serve-$io.log" >&2; exit 1; }
  # Record the server's key once, with a tiny push.
  echo probe >"$RUN/probe"
  "$TPC" copy -q --io "$io" --accept-new --state "$RUN/client-state" "$RUN/probe" \
    "tpc://127.0.0.1:${PORT[$io]}/probe"
  rm -rf "$RUN/root-$io"/*
done

warm() { find "$BIG" "$SMALL" -type f -exec cat {} + >/dev/null; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# bench NAME IO CMD PREPARE: hyperfine over RUNS; the server's CPU of a push is added.
bench() {
  local name=$1 io=$2 cmd=$3 prepare=$4 before after
  warm
  before=$(ticks "${PID[$io]}")
  hyperfine --style none --runs "$RUNS" --prepare "$prepare" \
    --export-json "$RES/$name.json" "$cmd" >/dev/null
  after=$(ticks "${PID[$io]}")
  echo "$(( after - before ))" >"$RES/$name.server-ticks"
}
settle() { sync; sleep "$SETTLE"; }

for io in uring portable; do
  echo "== $io: 2 GiB file, local copy" >&2
  bench "big-local-$io" "$io" "$TPC copy -q --io $io $BIG $RUN/out/big" \
    "rm -rf $RUN/out; mkdir -p $RUN/out; sync"
  echo "== $io: 2 GiB file, push on loopback" >&2
  bench "big-push-$io" "$io" \
    "$TPC copy -q --io $io --state $RUN/client-state $BIG tpc://127.0.0.1:${PORT[$io]}/big" \
    "rm -rf $RUN/root-$io/*; sync"
done
rm -rf "$RUN/out" "$RUN"/root-*/*
settle
for io in uring portable; do
  echo "== $io: $SMALL_COUNT files, local copy" >&2
  # A fresh destination per run; none deleted in between, so no run pays for deletes.
  bench "small-local-$io" "$io" \
    "d=\$(mktemp -d -p $RUN/out); $TPC copy -q --io $io $SMALL/ \$d" "mkdir -p $RUN/out; sync"
  rm -rf "$RUN/out"
  settle
  echo "== $io: $SMALL_COUNT files, push on loopback" >&2
  bench "small-push-$io" "$io" \
    "$TPC copy -q --io $io --state $RUN/client-state $SMALL/ tpc://127.0.0.1:${PORT[$io]}/small-\$(date +%s%N)" \
    "sync"
  rm -rf "$RUN/root-$io"/*
  settle
done

python3 - "$RES" "$HZ" "$BIG_MB" "$SMALL_COUNT" "$RUNS" "$COMMIT" <<'PY' | tee "$RES/report.md"
import json, statistics, sys
res, hz, big_mb, small, runs, commit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
def t(name):
    r = json.load(open(f"{res}/{name}.json"))["results"][0]
    ticks = int(open(f"{res}/{name}.server-ticks").read())
    cpu = (r["user"] + r["system"]) + (ticks / hz / runs if "push" in name else 0)
    return statistics.median(r["times"]), min(r["times"]), max(r["times"]), cpu
print(f"### Drivers side by side (commit {commit}, median of {runs})\n")
print("| case | driver | median s | min s | max s | GB/s | CPU s per run | portable / uring time |")
print("|---|---|---|---|---|---|---|---|")
out = {}
for case, label, nbytes in [("big-local", f"{big_mb} MiB file, local copy", big_mb << 20),
                            ("big-push", f"{big_mb} MiB file, push on loopback", big_mb << 20),
                            ("small-local", f"{small} files of 8 KiB, local copy", small * 8192),
                            ("small-push", f"{small} files of 8 KiB, push on loopback", small * 8192)]:
    u = t(f"{case}-uring")
    for io in ("uring", "portable"):
        med, lo, hi, cpu = t(f"{case}-{io}")
        ratio = f"{med / u[0]:.2f}x" if io == "portable" else ""
        print(f"| {label} | {io} | {med:.3f} | {lo:.3f} | {hi:.3f} | {nbytes / med / 1e9:.2f} | {cpu:.2f} | {ratio} |")
        out[f"{case}-{io}"] = {"median_s": med, "min_s": lo, "max_s": hi, "cpu_s": cpu, "bytes": nbytes}
json.dump(out, open(f"{res}/report.json", "w"), indent=1)
PY
echo "Command: \`RUNS=$RUNS BIG_MB=$BIG_MB SMALL_COUNT=$SMALL_COUNT tools/bench-drivers.sh\`" | tee -a "$RES/report.md"
