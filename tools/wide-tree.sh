#!/usr/bin/env bash
# tools/wide-tree.sh — the documented run of docs/HARDENING.md row 8: 10^6 entries in one
# directory and 10^5 hard links of one file, through a local copy, a push and a pull on
# loopback, each timed with its peak resident memory. Needs root (it mounts a tmpfs with
# room for the inodes at WORK) and a release build (cargo build --release).
#
#   tools/wide-tree.sh            # ENTRIES=1000000 LINKS=100000 WORK=/mnt/tpc-wide PORT=7700
set -euo pipefail
cd "$(dirname "$0")/.."
B=$PWD/target/release/tpc-xfer
ENTRIES=${ENTRIES:-1000000}
LINKS=${LINKS:-100000}
WORK=${WORK:-/mnt/tpc-wide}
PORT=${PORT:-7700}
[ -x "$B" ] || { echo "wide-tree: build first: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "wide-tree: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
mkdir -p "$WORK"
mount -t tmpfs -o size=8g,nr_inodes=8m tmpfs "$WORK"
sp=""
cleanup() {
  [ -z "$sp" ] || kill "$sp" 2> /dev/null || true
  [ -z "$sp" ] || wait "$sp" 2> /dev/null || true
  cd /
  umount "$WORK"
}
trap cleanup EXIT
cd "$WORK"
python3 - "$ENTRIES" "$LINKS" << 'PY'
import os, sys
entries, links = int(sys.argv[1]), int(sys.argv[2])
os.makedirs('src/one')
for i in range(entries):
    os.close(os.open(f'src/one/f{i:07d}', os.O_CREAT | os.O_WRONLY, 0o644))
os.makedirs('links/l')
with open('links/l/base', 'wb') as f:
    f.write(b'linked\n')
for i in range(links):
    os.link('links/l/base', f'links/l/h{i:06d}')
PY
mkdir -p k/ss root
chmod 700 k/ss
"$B" id --state k/cs | head -n1 > k/ss/authorized-clients
# One line per run: wall time, peak RSS of the command, its exit code.
run() {
  local name=$1
  shift
  /usr/bin/time -f "$name: %e s, peak RSS %M KiB, exit %x" "$@" > /dev/null 2> >(tail -n 2 >&2)
}
count() { find "$1" -mindepth 1 -maxdepth 1 | wc -l; }
"$B" serve --root root --listen 127.0.0.1:"$PORT" --state k/ss 2> k/server.log &
sp=$!
sleep 1
run "local copy of $ENTRIES entries" "$B" copy -q src/one dst/
echo "  at the destination: $(count dst/one) entries"
run "push of $ENTRIES entries" "$B" copy -q --accept-new --state k/cs src/one tpc://127.0.0.1:"$PORT"/
echo "  at the server: $(count root/one) entries; server peak RSS $(awk '/VmHWM/ {print $2}' /proc/$sp/status) KiB"
run "pull of $ENTRIES entries" "$B" copy -q --state k/cs tpc://127.0.0.1:"$PORT"/one/ pulled/
echo "  pulled: $(count pulled) entries"
run "local copy of $LINKS hard links" "$B" copy -q links/l dl/
echo "  names $(count dl/l), links of one file: $(stat -c %h dl/l/base)"
run "push of $LINKS hard links" "$B" copy -q --state k/cs links/l tpc://127.0.0.1:"$PORT"/
echo "  names $(count root/l), links of one file: $(stat -c %h root/l/base)"
run "pull of $LINKS hard links" "$B" copy -q --state k/cs tpc://127.0.0.1:"$PORT"/l/ pl/
echo "  names $(count pl), links of one file: $(stat -c %h pl/base)"
