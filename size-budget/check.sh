#!/bin/sh
# Builds the picoflow binary in every budgeted feature combination (release profile, stripped),
# prints a table of size, budget and margin, and exits non-zero when one is over its budget in
# size-budget/budget.txt.
#
#   size-budget/check.sh                  x86_64 (the host), every combination but static
#   size-budget/check.sh --static         the same plus the build with OpenSSL compiled in
#                                         (several minutes more: it compiles OpenSSL)
#   size-budget/check.sh --smallest       the smallest x86_64 build (size-budget/smallest.sh;
#                                         needs the Rust that scripts/cross.sh installs)
#   size-budget/check.sh --target T [--no-install]
#                                         the ARM builds of target T (aarch64, armv7), made by
#                                         scripts/cross.sh, which also runs each under qemu
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
status=0

# gate NAME BYTES: one table row; records a failure when NAME is over its budget.
gate() {
    max=$(awk -v n="$1" '$1 == n { print $NF }' size-budget/budget.txt)
    [ -n "$max" ] || { echo "no budget for $1 in size-budget/budget.txt" >&2; exit 1; }
    margin=$(awk -v b="$2" -v m="$max" 'BEGIN { printf "%+.1f%%", (m - b) * 100 / m }')
    printf '%-16s %12d %12d %9s\n' "$1" "$2" "$max" "$margin"
    if [ "$2" -gt "$max" ]; then
        echo "OVER BUDGET: $1 is $2 bytes, budget $max" >&2
        status=1
    fi
}

if [ "${1:-}" = "--smallest" ]; then
    out=$CARGO_TARGET_DIR/dist/picoflow-x86_64-smallest
    size-budget/smallest.sh x86_64-unknown-linux-gnu "$out"
    # It must still work: the sample workflow.
    tmp=$(mktemp -d)
    (cd "$tmp" && "$out" run "$OLDPWD/examples/hello-world.yaml" >/dev/null) || {
        echo "the smallest build does not run the sample workflow" >&2
        exit 1
    }
    rm -rf "$tmp"
    printf '%-16s %12s %12s %9s\n' combination bytes budget margin
    gate smallest "$(wc -c <"$out")"
    exit $status
fi

if [ "${1:-}" = "--target" ]; then
    target=${2:?--target needs aarch64 or armv7}
    shift 2
    variants=$(awk -v p="$target-" 'index($1, p) == 1 { print substr($1, length(p) + 1) }' \
        size-budget/budget.txt)
    [ -n "$variants" ] || { echo "no budget for target $target" >&2; exit 1; }
    # shellcheck disable=SC2086
    scripts/cross.sh "$target" "$@" $variants
    printf '%-16s %12s %12s %9s\n' combination bytes budget margin
    for v in $variants; do
        gate "$target-$v" "$(wc -c <"$CARGO_TARGET_DIR/dist/picoflow-$target-$v")"
    done
    exit $status
fi

combos="minimal ssh http docker metrics sqlite web fleet full"
[ "${1:-}" = "--static" ] && combos="$combos static"
bin="$CARGO_TARGET_DIR/release/picoflow"
printf '%-16s %12s %12s %9s\n' combination bytes budget margin
for name in $combos; do
    case $name in
        minimal) set -- --no-default-features ;;
        full) set -- ;;
        static) set -- --features vendored-openssl ;;
        *) set -- --no-default-features --features "$name" ;;
    esac
    cargo build -q --release -p picoflow-cli "$@"
    gate "$name" "$(wc -c <"$bin")"
done
exit $status
