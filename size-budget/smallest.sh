#!/bin/sh
# The smallest PicoFlow: shell tasks only (`--no-default-features`), with the standard library
# rebuilt from source for size. Used by size-budget/check.sh (x86_64) and scripts/cross.sh
# (the `smallest` variant of the ARM targets), which gate it against size-budget/budget.txt.
#
#   size-budget/smallest.sh TRIPLE OUT
#
# builds for the target TRIPLE (x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, …) and
# copies the binary to OUT. On top of the workspace's release profile it
#   * rebuilds std and core (`-Z build-std`) with `optimize_for_size`, so the standard library
#     is compiled at the profile's opt-level "z" and with LTO across it and PicoFlow;
#   * uses the `immediate-abort` panic strategy: a panic (a bug) aborts at once, without the
#     message and without the formatting machinery that printing it needs;
#   * records no source locations for panics (`-Z location-detail=none`).
# Behaviour is otherwise the same as the core build. It needs Debian's rustc-web (1.96, at
# /usr/bin/rustc, which scripts/cross.sh installs) and its std sources (package rust-web-src,
# /usr/lib/rustlib/src/rust); RUSTC_BOOTSTRAP=1 lets that stable compiler take the unstable
# options. Cargo is whichever is on PATH.
set -eu
cd "$(dirname "$0")/.."
triple=${1:?usage: size-budget/smallest.sh TRIPLE OUT}
out=${2:?usage: size-budget/smallest.sh TRIPLE OUT}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
[ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] || {
    echo "the smallest build needs Debian's rustc-web and rust-web-src (scripts/cross.sh installs them)" >&2
    exit 1
}
# Its own directory: std built from source must not mix with the other builds' artifacts.
dir=$CARGO_TARGET_DIR/smallest
RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$dir \
    RUSTFLAGS="-Z unstable-options -C panic=immediate-abort -Z location-detail=none" \
    cargo build -q --release -p picoflow-cli --no-default-features --target "$triple" \
    -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size
mkdir -p "$(dirname "$out")"
cp "$dir/$triple/release/picoflow" "$out"
