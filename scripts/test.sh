#!/bin/sh
# The whole PicoFlow test suite: installs what the tests need, runs those install steps again
# in a new Debian 12 root (scripts/fresh-install-check.sh), then checks formatting, lints
# every package with and without its default features, builds each feature alone, runs all
# tests, runs the sample workflow and checks the binary size budget; then cross-builds the
# aarch64 and armv7 binaries (size budget, smoke runs) and runs the integration tests against
# the aarch64 ones under qemu-user.
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "installing test tools"
scripts/install-test-deps.sh

step "the install steps in a fresh Debian 12 root whose OpenSSL is older than the archive's"
scripts/fresh-install-check.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy (default features)"
cargo clippy -p picoflow-lib --all-targets -- -D warnings
cargo clippy -p picoflow-cli --all-targets -- -D warnings
step "clippy (no default features)"
cargo clippy -p picoflow-lib --no-default-features --all-targets -- -D warnings
cargo clippy -p picoflow-cli --no-default-features --all-targets -- -D warnings

step "each feature alone"
for f in ssh http docker metrics sqlite web; do
    cargo check -q -p picoflow-lib --no-default-features --features "$f"
done

step "tests (all features)"
cargo test --workspace

step "tests (no default features)"
cargo test -p picoflow-lib --no-default-features
cargo test -p picoflow-cli --no-default-features --test validate --test run --test guards

step "fuzzing: workflow, schedule, duration, configuration and condition parsers, generated workflows through the engine (20 s each)"
PICOFLOW_FUZZ_SECONDS=20 cargo test -p picoflow-lib --test fuzz -- --nocapture

step "documentation examples and crate docs"
RUSTDOCFLAGS="-D warnings" cargo doc -q -p picoflow-lib --no-deps
cargo run -q -p picoflow-lib --example custom_executor

step "sample workflow (release build)"
cargo build -q --release -p picoflow-cli
tmp=$(mktemp -d)
(cd "$tmp" && "$CARGO_TARGET_DIR/release/picoflow" run "$OLDPWD/examples/hello-world.yaml")
rm -rf "$tmp"

step "size budget"
size-budget/check.sh

step "aarch64: cross builds under their size budget, each run under qemu-user"
size-budget/check.sh --target aarch64
dist="$CARGO_TARGET_DIR/dist"
qemu_aarch64="qemu-aarch64-static -L /"

step "aarch64: integration tests against the cross-built binary (all features) under qemu-user"
# Left out there, by name: the memory limit as RLIMIT_AS, which qemu-user does not pass on (a
# guest's setrlimit of RLIMIT_AS would limit the emulator itself, so it ignores it).
PICOFLOW_TEST_BIN="$dist/picoflow-aarch64-full" PICOFLOW_TEST_RUNNER="$qemu_aarch64" \
    cargo test -p picoflow-cli --test run --test validate --test state --test daemon \
    --test export --test secrets --test pipes --test faults --test data --test web --test tls \
    --test docker --test files --test fleet --test guards --test limits \
    -- --skip a_task_past_its_memory_limit_fails_naming_it

step "aarch64: run and validate tests against the minimal, the static and the smallest binary"
for b in minimal static smallest; do
    PICOFLOW_TEST_BIN="$dist/picoflow-aarch64-$b" PICOFLOW_TEST_RUNNER="$qemu_aarch64" \
        cargo test -p picoflow-cli --no-default-features --test validate --test run
done

step "the smallest build (x86_64): std rebuilt for size, under its budget"
size-budget/check.sh --smallest

step "armv7: cross builds under their size budget, each run under qemu-user"
size-budget/check.sh --target armv7

printf '\nall checks passed\n'
