#!/bin/sh
# Builds the picoflow binary in its budgeted configurations and fails when one is larger than
# size-budget/budget.txt allows. `--each` also measures every feature alone (for features.md).
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$CARGO_TARGET_DIR/release/picoflow"

measure() { # name, cargo feature arguments...
    name=$1; shift
    cargo build -q --release -p picoflow-cli "$@"
    bytes=$(wc -c < "$bin")
    printf '%-10s %10d bytes  %6s MiB\n' "$name" "$bytes" "$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')"
    eval "size_$name=$bytes"
}

limit() { awk -v n="$1" '$1 == n { print $NF }' size-budget/budget.txt; }

measure minimal --no-default-features
if [ "${1:-}" = "--each" ]; then
    for f in ssh http metrics sqlite; do
        measure "$f" --no-default-features --features "$f"
    done
fi
measure full

status=0
for name in minimal full; do
    eval "have=\$size_$name"
    max=$(limit "$name")
    if [ "$have" -gt "$max" ]; then
        echo "OVER BUDGET: $name is $have bytes, budget $max" >&2
        status=1
    else
        echo "within budget: $name $have <= $max"
    fi
done
exit $status
