#!/usr/bin/env bash
# End-to-end local benchmark: tpc-xfer against cp, rsync, rclone and b3sum on the same
# datasets in one run, median of N runs with a warm page cache. Prints markdown tables
# (as quoted in PERFORMANCE.md) and writes raw hyperfine JSON to $BENCH_DIR/results/.
#
#   tools/bench-local.sh            # 5 runs each, datasets under /var/tmp/tpc-bench
#   RUNS=7 BENCH_DIR=/data/b tools/bench-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/tpc-bench}
# Seconds to wait after deleting many inodes. ext4 without a journal (as on the dev VM)
# skips inodes freed in the last 60 s when it allocates, rescanning them for every new
# file; without the wait one tool would pay for the previous tool's cleanup.
SETTLE=${SETTLE:-70}

. tools/need.sh
install_missing rsync:rsync rclone:rclone b3sum:b3sum hyperfine:hyperfine python3:python3
cargo build --release --quiet
TPC=$PWD/target/release/tpc-xfer

mkdir -p "$BENCH_DIR/data" "$BENCH_DIR/out" "$BENCH_DIR/results"
D=$BENCH_DIR/data O=$BENCH_DIR/out R=$BENCH_DIR/results
if [ ! -f "$D/big.bin" ] || [ "$(stat -c %s "$D/big.bin")" != 2147483648 ]; then
  echo "generating 2 GiB random file" >&2
  head -c 2147483648 /dev/urandom > "$D/big.bin"
fi
if [ ! -f "$D/small/.complete" ]; then
  echo "generating 20,000 files of 8 KiB in 200 directories" >&2
  rm -rf "$D/small"
  python3 - "$D/small" <<'PY'
import os, sys, random
root = sys.argv[1]
rng = random.Random(2026)
for d in range(200):
    os.makedirs(f"{root}/d{d:03}", exist_ok=True)
    for i in range(100):
        with open(f"{root}/d{d:03}/f{i:03}", "wb") as f:
            f.write(rng.randbytes(8192))
open(f"{root}/.complete", "w").close()
PY
fi
warm() { find "$D" -type f -exec cat {} + > /dev/null; }
settle() { rm -rf "${O:?}"/*; sync; sleep "$SETTLE"; }

# bench NAME CMD: hyperfine median over fresh destinations $O/run.N (none deleted in
# between, so no run pays for another's deletes).
bench() {
  local name=$1 cmd=$2 prepare=${3:-sync}
  warm
  hyperfine --style none --runs "$RUNS" --prepare "$prepare" \
    --export-json "$R/$name.json" "$cmd" > /dev/null
}

echo "== 2 GiB file" >&2
big_prep="rm -rf $O/*; sync"
bench big_tpc        "$TPC copy -q $D/big.bin $O/big.bin" "$big_prep"
bench big_tpc_never  "$TPC copy -q --fsync never $D/big.bin $O/big.bin" "$big_prep"
bench big_cp         "cp $D/big.bin $O/big.bin" "$big_prep"
bench big_cp_sync    "cp $D/big.bin $O/big.bin && sync" "$big_prep"
bench big_rsync      "rsync -a $D/big.bin $O/big.bin" "$big_prep"
settle

echo "== 20,000 files of 8 KiB" >&2
fresh='d=$(mktemp -d -p '"$O"')'
bench small_tpc        "$fresh; $TPC copy -q $D/small/ \$d"; settle
bench small_tpc_never  "$fresh; $TPC copy -q --fsync never $D/small/ \$d"; settle
bench small_cp         "$fresh; cp -r $D/small/. \$d"; settle
bench small_cp_sync    "$fresh; cp -r $D/small/. \$d && sync"; settle
bench small_rsync      "$fresh; rsync -a $D/small/ \$d"; settle
bench small_rclone     "$fresh; rclone copy --config /dev/null $D/small \$d"; settle

echo "== rerun on an unchanged tree" >&2
"$TPC" copy -q "$D/small/" "$O/same-tpc"
rsync -a "$D/small/" "$O/same-rsync"
sync
bench rerun_tpc   "$TPC copy -q $D/small/ $O/same-tpc"
bench rerun_rsync "rsync -a $D/small/ $O/same-rsync"
settle

echo "== BLAKE3 throughput" >&2
# check hashes both arguments: 2 x 2 GiB per run on one core.
bench hash_tpc_1core "$TPC check -q --cores 1 $D/big.bin $D/big.bin"
bench hash_tpc_all   "$TPC check -q $D/big.bin $D/big.bin"
bench hash_b3sum_1t  "b3sum --num-threads 1 $D/big.bin"

python3 - "$R" <<'PY'
import json, sys, statistics, os
R = sys.argv[1]
def t(name):
    r = json.load(open(f"{R}/{name}.json"))["results"][0]
    return statistics.median(r["times"]), min(r["times"]), max(r["times"]), r["user"] + r["system"]
def table(title, rows, ref, bytes_=None):
    print(f"\n### {title}\n")
    print("| tool | median s | min s | max s | CPU s | vs " + ref[0] + (" | GB/s" if bytes_ else "") + " |")
    print("|---|---|---|---|---|---" + ("|---" if bytes_ else "") + "|")
    rm = t(ref[1])[0]
    for label, name in rows:
        med, lo, hi, cpu = t(name)
        extra = f" | {bytes_/med/1e9:.2f}" if bytes_ else ""
        print(f"| {label} | {med:.3f} | {lo:.3f} | {hi:.3f} | {cpu:.2f} | {rm/med:.2f}x{extra} |")
G2 = 2 << 30
table("One 2 GiB random file", [
    ("tpc-xfer copy (durable, default)", "big_tpc"),
    ("tpc-xfer copy --fsync never", "big_tpc_never"),
    ("cp", "big_cp"), ("cp && sync", "big_cp_sync"), ("rsync -a", "big_rsync")],
    ("cp", "big_cp"), G2)
table("20,000 files of 8 KiB in 200 directories", [
    ("tpc-xfer copy (durable, default)", "small_tpc"),
    ("tpc-xfer copy --fsync never", "small_tpc_never"),
    ("cp -r", "small_cp"), ("cp -r && sync", "small_cp_sync"),
    ("rsync -a", "small_rsync"), ("rclone copy", "small_rclone")],
    ("cp -r", "small_cp"))
table("Rerun on the unchanged 20,000-file tree", [
    ("tpc-xfer copy", "rerun_tpc"), ("rsync -a", "rerun_rsync")], ("rsync -a", "rerun_rsync"))
print("\n### BLAKE3 hashing of the 2 GiB file (page cache warm)\n")
print("| tool | median s | bytes hashed | GB/s |")
print("|---|---|---|---|")
for label, name, n in [("tpc-xfer check --cores 1 (engine, 1 shard)", "hash_tpc_1core", 2 * G2),
                       ("tpc-xfer check (engine, all shards)", "hash_tpc_all", 2 * G2),
                       ("b3sum --num-threads 1", "hash_b3sum_1t", G2)]:
    med = t(name)[0]
    print(f"| {label} | {med:.3f} | {n} | {n/med/1e9:.2f} |")
PY
