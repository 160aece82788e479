#!/usr/bin/env bash
# tools/ab-local.sh — A/B of tpc-xfer binaries on one local copy: the binaries take turns,
# ROUNDS copies each, each into a fresh destination, so that the VM's slow and fast
# minutes fall on all of them alike. Prints one line per copy and the medians.
#
#   tools/ab-local.sh OLD_BINARY NEW_BINARY [...]
#   ROUNDS=11 ARGS="--fsync never" tools/ab-local.sh A B
#
# Knobs: ROUNDS=7; SRC (default: 20,000 files of 8 KiB in 100 directories, made under
# WORK if missing; a trailing slash copies its contents); ARGS (copy flags);
# WORK=/dev/shm/tpc-ab-local (tmpfs: source and destination in memory, so the disk does
# not hide the software's cost; the destinations are removed at the end); RERUN=1: each
# binary first copies once into a destination of its own, and every round then copies
# again into it (the unchanged-tree rerun, which compares and writes nothing).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,17p' "$0"; exit 2; }
ROUNDS=${ROUNDS:-7}
WORK=${WORK:-/dev/shm/tpc-ab-local}
SRC=${SRC:-$WORK/small-20000/}
for b in "$@"; do [ -x "$b" ] || { echo "ab-local: $b is not executable" >&2; exit 1; }; done
if [ ! -e "$SRC" ]; then
  python3 - "$SRC" <<'EOF'
import os, sys
root = sys.argv[1]
data = os.urandom(8192)
for d in range(100):
    os.makedirs(f"{root}/d{d:03}", exist_ok=True)
    for f in range(200):
        with open(f"{root}/d{d:03}/f{f:03}", "wb") as fh:
            fh.write(data[f:] + data[:f])
EOF
fi
OUT=$WORK/out
rm -rf "$OUT"
mkdir -p "$OUT"
trap 'rm -rf "$OUT"' EXIT
results=$(mktemp)
dest_of() { if [ "${RERUN:-0}" = 1 ]; then echo "$OUT/$1"; else echo "$OUT/$1-$2"; fi; }
if [ "${RERUN:-0}" = 1 ]; then
  i=0
  for b in "$@"; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    "$b" copy -q ${ARGS:-} "$SRC" "$(dest_of $i 0)"
  done
fi
for r in $(seq "$ROUNDS"); do
  i=0
  for b in "$@"; do
    i=$((i + 1))
    sync
    s=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$b" copy -q ${ARGS:-} "$SRC" "$(dest_of $i "$r")"
    e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc)
    echo "round $r, binary $i ($b): $t s"
    echo "$i $t" >> "$results"
  done
done
python3 - "$results" "$@" <<'EOF'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    i, t = line.split()
    times.setdefault(int(i), []).append(float(t))
base = statistics.median(times[1])
for i, b in enumerate(sys.argv[2:], 1):
    v = times[i]
    m = statistics.median(v)
    print(f"binary {i} ({b}): median {m:.3f} s, min {min(v):.3f}, max {max(v):.3f}, {m / base:.3f}x binary 1's time")
EOF
rm -f "$results"
