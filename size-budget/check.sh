#!/bin/sh
# Builds the picoflow binary in every budgeted feature combination (release profile, stripped),
# prints a table of size, budget and margin, and exits non-zero when one is over its budget in
# size-budget/budget.txt. `--static` adds the build with OpenSSL compiled in (several minutes
# more: it compiles OpenSSL).
set -eu
combos="minimal ssh http metrics sqlite full"
[ "${1:-}" = "--static" ] && combos="$combos static"
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$CARGO_TARGET_DIR/release/picoflow"
status=0
printf '%-9s %12s %12s %9s\n' combination bytes budget margin
for name in $combos; do
    case $name in
        minimal) set -- --no-default-features ;;
        full) set -- ;;
        static) set -- --features vendored-openssl ;;
        *) set -- --no-default-features --features "$name" ;;
    esac
    cargo build -q --release -p picoflow-cli "$@"
    bytes=$(wc -c < "$bin")
    max=$(awk -v n="$name" '$1 == n { print $NF }' size-budget/budget.txt)
    margin=$(awk -v b="$bytes" -v m="$max" 'BEGIN { printf "%+.1f%%", (m - b) * 100 / m }')
    printf '%-9s %12d %12d %9s\n' "$name" "$bytes" "$max" "$margin"
    if [ "$bytes" -gt "$max" ]; then
        echo "OVER BUDGET: $name is $bytes bytes, budget $max" >&2
        status=1
    fi
done
exit $status
