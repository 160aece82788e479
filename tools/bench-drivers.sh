#!/usr/bin/env bash
# The portable driver against the io_uring driver, side by side in one run (issue 5):
# a local copy and a push over QUIC on loopback of the 2 GiB random file and of the
# 20,000-file tree, median of RUNS with a warm page cache, durable (the default --fsync).
# Prints a markdown table (as quoted in PERFORMANCE.md) and writes it, with every run's
# figures (runs.tsv) and JSON, under $BENCH_DIR/results/drivers-DATE-COMMIT/.
#
#   tools/bench-drivers.sh               # 5 runs each
#   RUNS=3 BIG_MB=256 SMALL_COUNT=2000 tools/bench-drivers.sh    # a quick look
#
# CPU seconds are the client's (GNU time) plus, for a push, the server's (read from
# /proc before and after); the table gives the median per run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
BIG_MB=${BIG_MB:-2048}
SMALL_COUNT=${SMALL_COUNT:-20000}
BENCH_DIR=${BENCH_DIR:-/var/tmp/tpc-bench-remote}
# ext4 without a journal (as on the dev VM) skips inodes freed in the last 60 s when it
# allocates; after deleting a tree, wait so one case does not pay for another's cleanup.
SETTLE=${SETTLE:-70}

. tools/need.sh
install_missing python3:python3 bc:bc /usr/bin/time:time
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
settle() { sync; sleep "$SETTLE"; }

# pair CASE PREPARE: RUNS rounds; each round runs the case once on each driver, the
# order alternating, so that both meet the same filesystem state (after deleting many
# files, ext4 here stays slow for longer than any settle: measured, both drivers alike).
# The command is case_cmd CASE IO. Appends "case io wall user sys server_s" to runs.tsv.
pair() {
  local case=$1 prepare=$2 round io order t0 t1 before after
  warm
  for round in $(seq 1 "$RUNS"); do
    if [ $((round % 2)) = 1 ]; then order="uring portable"; else order="portable uring"; fi
    for io in $order; do
      sh -c "$prepare"
      before=$(ticks "${PID[$io]}")
      t0=$(date +%s.%N)
      /usr/bin/time -f "%U %S" -o "$RUN/cpu" sh -c "$(case_cmd "$case" "$io")"
      t1=$(date +%s.%N)
      after=$(ticks "${PID[$io]}")
      echo "$case $io $(echo "$t1 - $t0" | bc) $(cat "$RUN/cpu") $(echo "scale=3; ($after - $before) / $HZ" | bc)" >>"$RES/runs.tsv"
    done
  done
}

case_cmd() {
  local case=$1 io=$2 push="$TPC copy -q --io $2 --state $RUN/client-state"
  case $case in
    big-local) echo "$TPC copy -q --io $io $BIG $RUN/out/big-$io" ;;
    big-push) echo "$push $BIG tpc://127.0.0.1:${PORT[$io]}/big" ;;
    # A fresh destination per run; none deleted in between, so no run pays for deletes.
    small-local) echo "$TPC copy -q --io $io $SMALL/ \$(mktemp -d -p $RUN/out)" ;;
    small-push) echo "$push $SMALL/ tpc://127.0.0.1:${PORT[$io]}/small-\$(date +%s%N)" ;;
  esac
}

mkdir -p "$RUN/out"
echo "== 2 GiB file, local copy" >&2
pair big-local "rm -rf $RUN/out/big-*; sync"
echo "== 2 GiB file, push on loopback" >&2
pair big-push "rm -rf $RUN/root-uring/* $RUN/root-portable/*; sync"
rm -rf "$RUN/out"/* "$RUN"/root-*/*
settle
echo "== $SMALL_COUNT files, local copy" >&2
pair small-local "sync"
rm -rf "$RUN/out"/*
settle
echo "== $SMALL_COUNT files, push on loopback" >&2
pair small-push "sync"

python3 - "$RES" "$BIG_MB" "$SMALL_COUNT" "$RUNS" "$COMMIT" <<'PY' | tee "$RES/report.md"
import collections, json, statistics, sys
res, big_mb, small, runs, commit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rows = collections.defaultdict(list)
for line in open(f"{res}/runs.tsv"):
    case, io, wall, user, sys_, server = line.split()
    rows[(case, io)].append((float(wall), float(user) + float(sys_) + float(server)))
print(f"### Drivers side by side (commit {commit}, median of {runs}, drivers alternating)\n")
print("| case | driver | median s | min s | max s | GB/s | CPU s per run | portable / uring time |")
print("|---|---|---|---|---|---|---|---|")
out = {}
for case, label, nbytes in [("big-local", f"{big_mb} MiB file, local copy", big_mb << 20),
                            ("big-push", f"{big_mb} MiB file, push on loopback", big_mb << 20),
                            ("small-local", f"{small} files of 8 KiB, local copy", small * 8192),
                            ("small-push", f"{small} files of 8 KiB, push on loopback", small * 8192)]:
    med_u = statistics.median(w for w, _ in rows[(case, "uring")])
    for io in ("uring", "portable"):
        walls = [w for w, _ in rows[(case, io)]]
        cpu = statistics.median(c for _, c in rows[(case, io)])
        med = statistics.median(walls)
        ratio = f"{med / med_u:.2f}x" if io == "portable" else ""
        print(f"| {label} | {io} | {med:.3f} | {min(walls):.3f} | {max(walls):.3f} | {nbytes / med / 1e9:.2f} | {cpu:.2f} | {ratio} |")
        out[f"{case}-{io}"] = {"median_s": med, "min_s": min(walls), "max_s": max(walls), "runs_s": walls, "cpu_s": cpu, "bytes": nbytes}
json.dump(out, open(f"{res}/report.json", "w"), indent=1)
PY
echo "Command: \`RUNS=$RUNS BIG_MB=$BIG_MB SMALL_COUNT=$SMALL_COUNT tools/bench-drivers.sh\`" | tee -a "$RES/report.md"
