#!/usr/bin/env bash
# Runs the main job on a small built-in example: builds tpc-xfer, makes a sample tree
# (files of several sizes, a symlink, an empty directory, odd names), copies it, copies it
# again (nothing changes), and proves the copy identical with `tpc-xfer check`. Then the
# same over QUIC on loopback: a server with its own keys, a push, a rerun, a pull back.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/tpc-xfer
work=$(mktemp -d "${TMPDIR:-/tmp}/tpc-xfer-example.XXXXXX")
server_pid=
cleanup() {
  local rc=$?
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

src=$work/sample
mkdir -p "$src/docs/nested" "$src/empty dir"
printf 'hello from tpc-xfer\n' > "$src/README.txt"
head -c 9000000 /dev/urandom > "$src/data.bin"            # three 4 MiB chunks
for i in $(seq 1 200); do printf 'note %d\n' "$i" > "$src/docs/note-$i.txt"; done
printf 'deep\n' > "$src/docs/nested/-dash name ü.txt"
ln -s README.txt "$src/link-to-readme"
chmod 0600 "$src/README.txt"
touch -d '1970-01-02 03:04:05.123456789' "$src/docs/nested/-dash name ü.txt"

echo "== copy $src/ -> $work/copy"
"$bin" copy "$src/" "$work/copy"
echo "== copy again (unchanged files are skipped)"
"$bin" copy "$src/" "$work/copy"
echo "== check"
"$bin" check "$src" "$work/copy"
echo "== summary as JSON"
"$bin" copy --json --verify "$src/" "$work/copy-json" | head -40

echo "== remote: a server on 127.0.0.1, this client's key authorized"
mkdir -p "$work/served" "$work/server-state"
chmod 700 "$work/server-state"
"$bin" id --state "$work/client-state" > "$work/server-state/authorized-clients"
"$bin" serve --root "$work/served" --listen 127.0.0.1:0 --state "$work/server-state" \
  2> "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q serving "$work/server.log" 2>/dev/null && break; sleep 0.05; done
cat "$work/server.log"
port=$(sed -n 's/.* on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$work/server.log" | head -1)
url=tpc://127.0.0.1:$port
echo "== push $src/ -> $url/sample (first contact: --accept-new records the server's key)"
"$bin" copy --accept-new --state "$work/client-state" "$src/" "$url/sample"
echo "== push again (unchanged files are skipped)"
"$bin" copy --state "$work/client-state" "$src/" "$url/sample"
echo "== pull $url/sample/ -> $work/pulled, and check"
"$bin" copy --state "$work/client-state" "$url/sample/" "$work/pulled"
"$bin" check "$src" "$work/pulled"
