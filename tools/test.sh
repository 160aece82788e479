#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests call (Debian packages,
# rustfmt and clippy), then format check, lints, unit and end-to-end tests; the
# end-to-end tests run twice, on the io_uring driver and on the portable one.
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/need.sh
install_missing diff:diffutils mount:mount setpriv:util-linux strace:strace nft:nftables rsync:rsync
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The portable driver builds (and lints clean) with the io_uring driver compiled out.
cargo clippy --release -p tpc-xfer --no-default-features --all-targets -- -D warnings
# Cross-target checks: all of tpc-xfer type-checks and lints clean for macOS and for
# Windows (tools/wine-check.sh also runs the Windows build, under Wine). The Rust
# targets are added if rustup can fetch them (CI may not reach rustup: then the checks
# are skipped with a note). The C parts of dependencies (ring, blake3, mimalloc) are
# stubbed with `true`: a check emits no code, so no macOS or Windows C toolchain is needed.
if command -v rustup >/dev/null 2>&1; then
  rustup target add x86_64-apple-darwin x86_64-pc-windows-gnu >/dev/null 2>&1 || true
fi
installed=$(rustup target list --installed 2>/dev/null || true)
if grep -qx x86_64-apple-darwin <<<"$installed"; then
  CC_x86_64_apple_darwin=true AR_x86_64_apple_darwin=true \
    cargo clippy --quiet -p tpc-xfer --all-targets --target x86_64-apple-darwin -- -D warnings
else
  echo "note: Rust target x86_64-apple-darwin not installed; macOS check skipped"
fi
if grep -qx x86_64-pc-windows-gnu <<<"$installed"; then
  CC_x86_64_pc_windows_gnu=true AR_x86_64_pc_windows_gnu=true \
    cargo clippy --quiet -p tpc-xfer --target x86_64-pc-windows-gnu -- -D warnings
else
  echo "note: Rust target x86_64-pc-windows-gnu not installed; Windows check skipped"
fi
# The tests run under cargo-nextest where it is installed: one process per test, as many
# at once as there are cores, across all the test binaries, so a binary's last slow test
# no longer leaves the other core idle (the TCP pass: 55 s against 75 s with `cargo
# test`); a test that hangs is killed after 300 s (.config/nextest.toml). Without it,
# `cargo test` runs the binaries one after another. The suite has no doctests (nextest
# does not run them).
if cargo nextest --version >/dev/null 2>&1; then
  run_tests() { cargo nextest run --release --no-fail-fast "$@"; }
else
  echo "note: cargo-nextest not installed; running the test binaries one after another"
  run_tests() { cargo test --release "$@"; }
fi
# Release build: the end-to-end tests move a few GiB and must stay quick on 2 cores.
# `--io` defaults to auto, which is io_uring here.
run_tests --workspace
# The end-to-end suite again, every shard on the portable driver (the binary and the
# tests' own shards read TPC_XFER_IO). tests/io.rs mixes the drivers itself.
TPC_XFER_IO=portable run_tests -p tpc-xfer \
  --test copy --test local_safety --test remote --test hostile --test hostile_server --test netns --test wan
# The remote suites again over TCP + TLS (`--transport tcp`, which the binary reads from
# TPC_XFER_TRANSPORT; tests/hostile.rs dials TCP itself then). tests/netns.rs tests the
# automatic fallback where UDP is blocked.
TPC_XFER_TRANSPORT=tcp run_tests -p tpc-xfer --test remote --test hostile --test hostile_server
