#!/usr/bin/env bash
# Builds tpc-xfer for Windows (x86_64-pc-windows-gnu, with MinGW) and runs it under
# Wine: the engine's unit tests (confinement through cap-std, the OS services), then a
# local copy of a small tree, durable, checked with `tpc-xfer check` (sizes, modes as
# Windows keeps them, mtimes, digests) and copied again unchanged. Remote transfers do
# not run under Wine 8: its Winsock lacks IP_RECVECN, which quinn-udp sets on every
# socket on Windows. Not part of tools/test.sh (it installs Wine and MinGW and builds
# everything once more); run it after changing Windows code. Exit 0 when all of it holds.
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/need.sh
install_missing x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64 wine:wine
rustup target add x86_64-pc-windows-gnu >/dev/null

target=x86_64-pc-windows-gnu
work=$(mktemp -d /tmp/tpc-wine.XXXXXX)
trap 'wineserver -k 2>/dev/null || true; rm -rf "$work"' EXIT
export WINEPREFIX=$work/prefix WINEDEBUG=-all
# A target directory of its own: build scripts that ran with the stubbed C compiler of
# tools/test.sh's cross checks must not be reused for a real build.
export CARGO_TARGET_DIR=target/wine
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
export CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc
export AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar

wineboot -i >/dev/null 2>&1
# Rust's std asks bcryptprimitives.dll's ProcessPrng for randomness; Wine 8 has no such
# DLL. A stand-in built here forwards to BCryptGenRandom, which Wine has.
cat > "$work/prng.c" <<'EOF'
#include <windows.h>
#include <bcrypt.h>
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    return BCryptGenRandom(NULL, data, (ULONG)len, BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0;
}
EOF
x86_64-w64-mingw32-gcc -shared -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  "$work/prng.c" -lbcrypt

echo "== engine unit tests under Wine"
cargo test --quiet --target $target -p tpc-engine --lib

echo "== local copy under Wine"
cargo build --quiet --target $target -p tpc-xfer
exe=$CARGO_TARGET_DIR/$target/debug/tpc-xfer.exe
src=$work/src
mkdir -p "$src/nested/deeper" "$src/with space" "$src/ünïcödé"
head -c 70000000 /dev/urandom > "$src/two-ranges.bin"   # more than one 64 MiB range
head -c 5000000 /dev/urandom > "$src/nested/two-chunks.bin"
: > "$src/nested/empty"
echo "read-only" > "$src/read-only.txt"
chmod 444 "$src/read-only.txt"
echo "x" > "$src/with space/a file"
echo "y" > "$src/ünïcödé/ß.txt"
for i in $(seq 200); do echo "$i" > "$src/nested/deeper/f$i"; done
touch -d '2001-02-03 04:05:06.7' "$src/nested/two-chunks.bin"

wine "$exe" copy "$src/" "$work/dst/"
wine "$exe" check "$src" "$work/dst"
again=$(wine "$exe" copy "$src/" "$work/dst/" 2>&1)
echo "$again"
grep -q "copied 0 of" <<<"$again" || { echo "FAIL: the unchanged rerun copied files"; exit 1; }
[ "$(stat -c %a "$work/dst/read-only.txt")" = 444 ] || { echo "FAIL: read-only.txt is writable"; exit 1; }
echo "wine-check: ok"
