#!/usr/bin/env bash
# Runs the main job on a small built-in example: builds tpc-xfer, makes a sample tree
# (files of several sizes, a symlink, an empty directory, odd names), copies it, copies it
# again (nothing changes), and proves the copy identical with `tpc-xfer check`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/tpc-xfer
work=$(mktemp -d "${TMPDIR:-/tmp}/tpc-xfer-example.XXXXXX")
trap 'rm -rf "$work"' EXIT

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
