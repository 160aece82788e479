#!/usr/bin/env bash
# tools/ab-push.sh — A/B of tpc-xfer binaries on one loopback push: the binaries take turns,
# ROUNDS pushes each, so that the VM's slow and fast minutes fall on all of them alike.
# Each push goes to a fresh server root and nothing is deleted until the end (deleting
# many files slows the next inode allocations on this ext4; see PERFORMANCE.md).
#
#   tools/ab-push.sh OLD_BINARY NEW_BINARY            # prints one line per push
#   ROUNDS=5 SRC=/some/tree/ ARGS="--fsync never" tools/ab-push.sh A B
#
# Knobs: ROUNDS=3; SRC (default: the small-file tree of tools/bench-remote.sh, which
# must exist: run that once); ARGS (client flags); SARGS (server flags); PORT=7497;
# WORK=/var/tmp/tpc-ab (roots, keys and logs; removed at the end); SERVER=BINARY: one
# server of that binary, warmed by a push of SRC first, takes every push (as in
# tools/bench-remote.sh: only the clients differ, and the server's memory is warm);
# SERVER=each: every binary pushes to a warm server of its own binary (port PORT+10*i),
# for changes to the receiving side, and with CLIENT=BINARY that one client pushes to
# each (only the servers differ); CPU=1: also the CPU seconds (user+system) of the client
# and, with SERVER set, of the server over each push; DROP_CACHES=1: drop the page cache
# before each push (root), so SRC is read from disk. A pushed single file is deleted
# after its push, so that many rounds of a large one fit on the disk.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,22p' "$0"; exit 2; }
ROUNDS=${ROUNDS:-3}
SRC=${SRC:-/var/tmp/tpc-bench-remote/data/small-20000/}
PORT=${PORT:-7497}
WORK=${WORK:-/var/tmp/tpc-ab}
[ -d "$SRC" ] || [ -f "$SRC" ] || { echo "ab-push: no $SRC (run tools/bench-remote.sh once)" >&2; exit 1; }
for b in "$@" ${CLIENT:-}; do [ -x "$b" ] || { echo "ab-push: $b is not executable" >&2; exit 1; }; done
[ -z "${CLIENT:-}" ] || [ "${SERVER:-}" = each ] || { echo "ab-push: CLIENT= needs SERVER=each" >&2; exit 2; }
[ "${CPU:-0}" != 1 ] || [ -x /usr/bin/time ] || { echo "ab-push: CPU=1 needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
# CPU seconds (user+system) process $1 has used so far.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
T=$WORK/$(date +%s)
mkdir -p "$T/ss"
chmod 700 "$T/ss"
spid=""
spids=()
cleanup() {
  local rc=$?
  for p in $spid "${spids[@]}"; do
    kill "$p" 2> /dev/null || true
    wait "$p" 2> /dev/null || true
  done
  # A failed A/B shows the server's side before its files go.
  [ "$rc" = 0 ] || { echo "ab-push: failed; the last server said:" >&2; cat "$T/server.log" >&2 2> /dev/null || true; }
  rm -rf "$T"
}
trap cleanup EXIT
"$1" id --state "$T/cs" > "$T/client-id"
head -n1 "$T/client-id" > "$T/ss/authorized-clients"
[ -z "${SERVER:-}" ] || [ "$SERVER" = each ] || [ -x "$SERVER" ] ||
  { echo "ab-push: $SERVER is not executable" >&2; exit 1; }
# Starts a server of binary $1 on root $2 and port $4 (default PORT) and waits until it
# has taken a first push of $3 (which also records its key).
start_server() {
  local port=${4:-$PORT}
  # shellcheck disable=SC2086 # flags, split on purpose
  "$1" serve ${SARGS:-} --root "$2" --listen 127.0.0.1:"$port" --state "$T/ss" 2> "$T/server.log" &
  spid=$!
  local up=0
  for _ in $(seq 50); do
    "$1" copy -q --accept-new --state "$T/cs" "$3" tpc://127.0.0.1:"$port"/warm 2> /dev/null && { up=1; break; }
    sleep 0.1
  done
  [ "$up" = 1 ] || { echo "ab-push: the server of $1 did not take a first push" >&2; exit 1; }
}
stop_server() {
  kill "$spid" 2> /dev/null || true
  wait "$spid" 2> /dev/null || true
  spid=""
}
if [ "${SERVER:-}" = each ]; then
  i=0
  for b in "$@"; do
    i=$((i + 1))
    mkdir -p "$T/root-$i"
    start_server "$b" "$T/root-$i" "$SRC" $((PORT + 10 * i))
    spids+=("$spid")
    spid=""
  done
elif [ -n "${SERVER:-}" ]; then
  mkdir -p "$T/root"
  start_server "$SERVER" "$T/root" "$SRC"
fi
for r in $(seq "$ROUNDS"); do
  i=0
  for b in "$@"; do
    i=$((i + 1))
    port=$PORT
    root=$T/root
    client=$b
    server_pid=$spid
    if [ "${SERVER:-}" = each ]; then
      port=$((PORT + 10 * i))
      root=$T/root-$i
      dest=ab-$i-$r/
      client=${CLIENT:-$b}
      server_pid=${spids[$((i - 1))]}
    elif [ -n "${SERVER:-}" ]; then
      dest=ab-$i-$r/
    else
      root=$T/root-$i-$r
      mkdir -p "$T/root-$i-$r"
      start_server "$b" "$T/root-$i-$r" "$0"
      dest=ab/
    fi
    sync
    [ "${DROP_CACHES:-0}" = 1 ] && echo 3 > /proc/sys/vm/drop_caches
    sleep 3
    timer=()
    [ "${CPU:-0}" = 1 ] && timer=(/usr/bin/time -f "%U %S" -o "$T/client-cpu")
    before=""
    [ -n "${SERVER:-}" ] && before=$(cpu_of "$server_pid")
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "${timer[@]}" "$client" copy -q --state "$T/cs" ${ARGS:-} "$SRC" tpc://127.0.0.1:"$port"/"$dest" ||
      { echo "ab-push: round $r, binary $i ($b): the push failed" >&2; exit 1; }
    end=$(date +%s.%N)
    cpu=""
    if [ "${CPU:-0}" = 1 ]; then
      cpu=", client CPU $(awk '{ printf "%.2f", $1 + $2 }' "$T/client-cpu") s"
      [ -z "$before" ] ||
        cpu="$cpu, server CPU $(awk -v a="$before" -v b="$(cpu_of "$server_pid")" 'BEGIN { printf "%.2f", b - a }') s"
    fi
    echo "round $r, binary $i ($b): $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }') s$cpu"
    [ -f "$SRC" ] && rm -rf "${root:?}/${dest:?}"
    [ -n "${SERVER:-}" ] || stop_server
  done
done
[ -z "${SERVER:-}" ] || stop_server
