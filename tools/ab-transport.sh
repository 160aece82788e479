#!/usr/bin/env bash
# tools/ab-transport.sh — one loopback push, interleaved round by round: a baseline
# tpc-xfer over QUIC, this tpc-xfer over QUIC and over TCP (`--transport`), and the
# rsync daemon, so the VM's slow and fast minutes fall on all of them alike. Prints each
# push's seconds and, at the end, the median, min and max per tool.
#
#   OLD=/path/to/baseline/tpc-xfer tools/ab-transport.sh SRC
#   ROUNDS=5 ARGS="--fsync never" OLD=... tools/ab-transport.sh /dev/shm/big.bin
#
# Knobs: ROUNDS=5; NEW=target/release/tpc-xfer; OLD (a baseline binary; left out if
# unset); ARGS (tpc-xfer client flags for every push, e.g. --fsync never); PORT=7600
# (old server), PORT+10 (new), PORT+20 (rsync daemon); WORK=/dev/shm/tpc-abt (roots and
# keys, on tmpfs so the disk does not hide the software; removed at the end). A pushed
# copy is deleted after its push, outside the timing. Needs rsync (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { sed -n '2,14p' "$0"; exit 2; }
SRC=$1
ROUNDS=${ROUNDS:-5}
NEW=${NEW:-target/release/tpc-xfer}
OLD=${OLD:-}
ARGS=${ARGS:-}
PORT=${PORT:-7600}
WORK=${WORK:-/dev/shm/tpc-abt}
. tools/need.sh
install_missing rsync:rsync
[ -e "$SRC" ] || { echo "ab-transport: no $SRC" >&2; exit 1; }
for b in "$NEW" $OLD; do [ -x "$b" ] || { echo "ab-transport: $b is not executable" >&2; exit 1; }; done
rm -rf "$WORK"
mkdir -p "$WORK/ss" "$WORK/cs" "$WORK/root-old" "$WORK/root-new" "$WORK/root-rsync"
chmod 700 "$WORK/ss" "$WORK/cs"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"$NEW" id --state "$WORK/ss" >/dev/null
"$NEW" id --state "$WORK/cs" > "$WORK/ss/authorized-clients"
if [ -n "$OLD" ]; then
  "$OLD" serve --root "$WORK/root-old" --listen "127.0.0.1:$PORT" --state "$WORK/ss" \
    2>"$WORK/old.log" &
  pids+=($!)
fi
"$NEW" serve --root "$WORK/root-new" --listen "127.0.0.1:$((PORT + 10))" --state "$WORK/ss" \
  2>"$WORK/new.log" &
pids+=($!)
cat > "$WORK/rsyncd.conf" <<CONF
use chroot = no
[ab]
  path = $WORK/root-rsync
  read only = no
  uid = $(id -u)
  gid = $(id -g)
CONF
rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --address=127.0.0.1 \
  --port=$((PORT + 20)) &
pids+=($!)
sleep 1
tools=(new-quic new-tcp rsyncd)
[ -z "$OLD" ] || tools=(old-quic "${tools[@]}")
# push TOOL NAME: one push of SRC to NAME under that tool's root.
push() {
  case $1 in
    old-quic) "$OLD" copy -q $ARGS --accept-new --state "$WORK/cs" "$SRC" \
      "tpc://127.0.0.1:$PORT/$2" ;;
    new-quic) "$NEW" copy -q $ARGS --transport quic --accept-new --state "$WORK/cs" "$SRC" \
      "tpc://127.0.0.1:$((PORT + 10))/$2" ;;
    new-tcp) "$NEW" copy -q $ARGS --transport tcp --accept-new --state "$WORK/cs" "$SRC" \
      "tpc://127.0.0.1:$((PORT + 10))/$2" ;;
    rsyncd) rsync -a "$SRC" "rsync://127.0.0.1:$((PORT + 20))/ab/$2" ;;
  esac
}
root_of() {
  case $1 in old-quic) echo "$WORK/root-old" ;; new-*) echo "$WORK/root-new" ;;
    rsyncd) echo "$WORK/root-rsync" ;; esac
}
# One untimed push each: keys recorded, servers and page cache warm.
for t in "${tools[@]}"; do push "$t" warm; rm -rf "$(root_of "$t")/warm"; done
declare -A times
for r in $(seq 1 "$ROUNDS"); do
  for t in "${tools[@]}"; do
    sync
    start=$(date +%s.%N)
    push "$t" "r$r"
    end=$(date +%s.%N)
    s=$(echo "$end - $start" | bc -l)
    times[$t]="${times[$t]:-} $s"
    printf 'round %d %-9s %.3f s\n' "$r" "$t" "$s"
    rm -rf "$(root_of "$t")/r$r"
  done
done
echo
echo "| tool | median s | min s | max s |"
echo "|---|---|---|---|"
for t in "${tools[@]}"; do
  echo "${times[$t]}" | tr ' ' '\n' | grep . | sort -g | awk -v t="$t" \
    '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
       printf "| %s | %.3f | %.3f | %.3f |\n", t, m, a[1], a[NR] }'
done
