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
# DROP_CACHES=1: drop the page cache before each push (root), so SRC is read from disk.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,17p' "$0"; exit 2; }
ROUNDS=${ROUNDS:-3}
SRC=${SRC:-/var/tmp/tpc-bench-remote/data/small-20000/}
PORT=${PORT:-7497}
WORK=${WORK:-/var/tmp/tpc-ab}
[ -d "$SRC" ] || [ -f "$SRC" ] || { echo "ab-push: no $SRC (run tools/bench-remote.sh once)" >&2; exit 1; }
for b in "$@"; do [ -x "$b" ] || { echo "ab-push: $b is not executable" >&2; exit 1; }; done
T=$WORK/$(date +%s)
mkdir -p "$T/ss"
chmod 700 "$T/ss"
spid=""
cleanup() {
  local rc=$?
  if [ -n "$spid" ]; then
    kill "$spid" 2> /dev/null || true
    wait "$spid" 2> /dev/null || true
  fi
  # A failed A/B shows the server's side before its files go.
  [ "$rc" = 0 ] || { echo "ab-push: failed; the last server said:" >&2; cat "$T/server.log" >&2 2> /dev/null || true; }
  rm -rf "$T"
}
trap cleanup EXIT
"$1" id --state "$T/cs" > "$T/client-id"
head -n1 "$T/client-id" > "$T/ss/authorized-clients"
[ -z "${SERVER:-}" ] || [ -x "$SERVER" ] || { echo "ab-push: $SERVER is not executable" >&2; exit 1; }
# Starts a server of binary $1 on root $2 and waits until it has taken a first push of $3
# (which also records its key).
start_server() {
  # shellcheck disable=SC2086 # flags, split on purpose
  "$1" serve ${SARGS:-} --root "$2" --listen 127.0.0.1:"$PORT" --state "$T/ss" 2> "$T/server.log" &
  spid=$!
  local up=0
  for _ in $(seq 50); do
    "$1" copy -q --accept-new --state "$T/cs" "$3" tpc://127.0.0.1:"$PORT"/warm 2> /dev/null && { up=1; break; }
    sleep 0.1
  done
  [ "$up" = 1 ] || { echo "ab-push: the server of $1 did not take a first push" >&2; exit 1; }
}
stop_server() {
  kill "$spid" 2> /dev/null || true
  wait "$spid" 2> /dev/null || true
  spid=""
}
if [ -n "${SERVER:-}" ]; then
  mkdir -p "$T/root"
  start_server "$SERVER" "$T/root" "$SRC"
fi
for r in $(seq "$ROUNDS"); do
  i=0
  for b in "$@"; do
    i=$((i + 1))
    if [ -n "${SERVER:-}" ]; then
      dest=ab-$i-$r/
    else
      mkdir -p "$T/root-$i-$r"
      start_server "$b" "$T/root-$i-$r" "$0"
      dest=ab/
    fi
    sync
    [ "${DROP_CACHES:-0}" = 1 ] && echo 3 > /proc/sys/vm/drop_caches
    sleep 3
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$b" copy -q --state "$T/cs" ${ARGS:-} "$SRC" tpc://127.0.0.1:"$PORT"/"$dest" ||
      { echo "ab-push: round $r, binary $i ($b): the push failed" >&2; exit 1; }
    end=$(date +%s.%N)
    echo "round $r, binary $i ($b): $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }') s"
    [ -n "${SERVER:-}" ] || stop_server
  done
done
[ -z "${SERVER:-}" ] || stop_server
