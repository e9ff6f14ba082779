#!/bin/sh
# Cross-builds release binaries of picoflow for a Raspberry Pi class device on a Debian
# bookworm (or Ubuntu) x86_64 host, installing what it needs with apt, and runs each one under
# qemu-user as a smoke test.
#
#   scripts/cross.sh aarch64 [minimal] [full] [static] [smallest]   64-bit Raspberry Pi OS
#                                                                    (Zero 2 W, 3, 4, 5)
#   scripts/cross.sh armv7   [minimal] [full] [smallest]            32-bit Raspberry Pi OS
#
# Variants (default: minimal full):
#   minimal --no-default-features: shell tasks only, the smallest binary
#   full    every default feature (ssh, http, docker, metrics, sqlite, web, fleet), linked to the device's libssl3
#   static  minimal, linked statically against glibc (crt-static): no glibc version floor
#   smallest minimal with the standard library rebuilt for size (size-budget/smallest.sh)
#
# The binaries are copied to $CARGO_TARGET_DIR/dist/picoflow-<target>-<variant> (the target
# directory defaults to ./target); their stripped sizes are printed. `--no-install` skips the
# apt step; `--install-only` stops after it. Debian's own Rust (package rustc-web, /usr/bin/rustc) is used because it ships the
# standard library for the ARM targets as packages (libstd-rust-web-dev:<arch>); cargo is
# whichever is on PATH.
set -eu
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

usage() {
    echo "usage: scripts/cross.sh aarch64|armv7 [--no-install | --install-only] [minimal] [full] [static] [smallest]" >&2
    exit 4
}

[ $# -ge 1 ] || usage
target=$1
shift
case $target in
    aarch64)
        triple=aarch64-unknown-linux-gnu
        arch=arm64
        gnu=aarch64-linux-gnu
        qemu=qemu-aarch64-static
        ;;
    armv7)
        triple=armv7-unknown-linux-gnueabihf
        arch=armhf
        gnu=arm-linux-gnueabihf
        qemu=qemu-arm-static
        ;;
    *) usage ;;
esac

install=yes
install_only=no
variants=""
for a in "$@"; do
    case $a in
        --no-install) install=no ;;
        --install-only) install_only=yes ;;
        minimal | full | smallest) variants="$variants $a" ;;
        static)
            [ "$target" = aarch64 ] || { echo "static is built for aarch64 only" >&2; exit 4; }
            variants="$variants $a"
            ;;
        *) usage ;;
    esac
done
[ -n "$variants" ] || variants="minimal full"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
aptlog=$(mktemp)
trap 'rm -f "$aptlog"' EXIT

# apt-get update [OPTIONS], tried up to three times 15 s apart; returns 1 if an index is still
# missing. When one index of a suite fails ("Mirror sync in progress?"), apt keeps the old lists
# of that whole suite, for every architecture.
apt_update() {
    tries=0
    while :; do
        tries=$((tries + 1))
        $SUDO apt-get update -q "$@" >"$aptlog" 2>&1 || true
        grep -qE '^(E: |W: (Failed to fetch|Some index files failed))' \
            "$aptlog" || return 0
        [ $tries -lt 3 ] || return 1
        echo "apt-get update incomplete (try $tries), retrying in 15 s" >&2
        sleep 15
    done
}

# The version apt would install of package $1.
candidate() {
    apt-cache policy "$1" | awk '$1 == "Candidate:" { print $2 }'
}

# adopt_index ARCH: when the security suite's index for ARCH cannot be downloaded whole (the
# mirror serves an edition that the signed release file no longer lists), apt drops it and
# offers nothing of that suite for ARCH. The edition the mirror has is fetched with apt's own
# helper, from the address of the host's index of the same suite, and put where apt keeps its
# lists; apt then installs from it as usual, checking each package against the sums it lists.
adopt_index() {
    read -r site suite component list <<EOF
$(apt-get indextargets --format '$(SITE) $(RELEASE) $(COMPONENT) $(FILENAME)' \
        "Architecture: $(dpkg --print-architecture)" 'Created-By: Packages' |
        awk '$2 ~ /-security$/ { print; exit }')
EOF
    [ -n "${list:-}" ] || { echo "no security suite configured for apt" >&2; exit 1; }
    list=$(echo "${list%_Packages*}_Packages" | sed "s/binary-$(dpkg --print-architecture)_/binary-$1_/")
    tmp=$(mktemp)
    /usr/lib/apt/apt-helper download-file \
        "$site/dists/$suite/$component/binary-$1/Packages.xz" "$tmp.xz" >/dev/null 2>&1
    xz -dc "$tmp.xz" | $SUDO tee "$list" >/dev/null
    rm -f "$tmp" "$tmp.xz"
    echo "warning: using the $suite index for $1 that the mirror has, which is not the signed one" >&2
}

# The multi-arch pairs: packages installed for the host and for the target, which dpkg keeps at
# one version on every architecture.
pairs="libstd-rust-web-dev libssl-dev libc6"

# The installed version of package $1 (with its :arch), empty when it is not installed.
installed() {
    dpkg-query -W -f '${db:Status-Status} ${Version}' "$1" 2>/dev/null |
        awk '$1 == "installed" { print $2 }'
}

packages_present() {
    for p in rustc-web rust-web-src qemu-user-static pkg-config xz-utils "gcc-$gnu" \
        "libc6-dev-$arch-cross"; do
        [ -n "$(installed "$p")" ] || return 1
    done
    for p in $pairs; do
        host=$(installed "$p:$native")
        [ -n "$host" ] && [ "$host" = "$(installed "$p:$arch")" ] || return 1
    done
}

native=$(dpkg --print-architecture)

if [ $install = yes ] && ! packages_present; then
    export DEBIAN_FRONTEND=noninteractive
    # First the lists of the architectures already configured, so that a missing index of the
    # new one cannot hold back the host's (Debian's newer Rust is in the security suite).
    set -- -o "APT::Architectures::=$native"
    for a in $(dpkg --print-foreign-architectures); do
        [ "$a" = "$arch" ] || set -- "$@" -o "APT::Architectures::=$a"
    done
    apt_update "$@" || {
        grep -E '^[EW]: ' "$aptlog" >&2
        echo "apt-get update kept failing; try again later" >&2
        exit 1
    }
    if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        $SUDO dpkg --add-architecture "$arch"
    fi
    complete=yes
    apt_update || complete=no
    if [ $complete = no ]; then
        # Tolerated only when what is missing is the target architecture's own index.
        if grep -E '^E: Failed to fetch' "$aptlog" | grep -qv "binary-$arch/"; then
            grep -E '^[EW]: ' "$aptlog" >&2
            exit 1
        fi
        echo "the $arch index of a suite could not be downloaded; using the rest" >&2
    fi
    # Each multi-arch pair is installed at the archive's newest version (the candidate) on both
    # architectures, in one transaction: a host package older than the candidate is upgraded,
    # never matched by looking for its old version for the target (the archive drops old
    # versions, so it is seldom there).
    mismatch() {
        for p in $pairs; do
            [ "$(candidate "$p:$native")" = "$(candidate "$p:$arch")" ] || echo "$p"
        done
    }
    if [ -n "$(mismatch)" ] && [ $complete = no ]; then
        adopt_index "$arch"
    fi
    for p in $(mismatch); do
        echo "apt offers $p $(candidate "$p:$native") for $native but $(candidate "$p:$arch")" \
            "for $arch: the two must be one version (apt-get update, or wait for the mirror)" >&2
    done
    [ -z "$(mismatch)" ] || exit 1
    set -- qemu-user-static pkg-config xz-utils "gcc-$gnu" \
        "libc6-dev-$arch-cross"
    for p in $pairs; do
        for a in "$native" "$arch"; do
            v=$(candidate "$p:$a")
            [ -n "$v" ] && [ "$v" != "(none)" ] || {
                echo "apt knows no $p for $a: is $a's index in the sources?" >&2
                exit 1
            }
            set -- "$@" "$p:$a=$v"
        done
    done
    rust=$(candidate "libstd-rust-web-dev:$native")
    echo "installing Debian's Rust $rust with the $arch standard library"
    $SUDO apt-get install -y -q --no-install-recommends "$@" "rustc-web=$rust" "rust-web-src=$rust"
    for p in $pairs; do
        [ "$(installed "$p:$native")" = "$(installed "$p:$arch")" ] || {
            echo "after the install, $p is $(installed "$p:$native") for $native and" \
                "'$(installed "$p:$arch")' for $arch" >&2
            exit 1
        }
    done
fi
rustc=/usr/bin/rustc
[ -x $rustc ] || { echo "$rustc missing: run without --no-install" >&2; exit 1; }
need=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
have=$($rustc --version | awk '{ print $2 }')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
    echo "$rustc is $have; PicoFlow needs $need (bookworm-security has it: apt-get update)" >&2
    exit 1
fi
[ $install_only = no ] || { echo "installed: Debian's Rust $have for $triple"; exit 0; }

upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
under=$(echo "$triple" | tr '-' '_')
export RUSTC=$rustc
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
export "CC_${under}=$gnu-gcc"
export "AR_${under}=$gnu-ar"
# openssl-sys (ssh, http) finds the device's libssl through the multi-arch pkg-config files.
export PKG_CONFIG_ALLOW_CROSS=1
export "PKG_CONFIG_LIBDIR_${under}=/usr/lib/$gnu/pkgconfig:/usr/share/pkgconfig"

# Host build scripts compiled by Debian's rustc must not replace those of the native builds.
cross_dir=$CARGO_TARGET_DIR/cross
dist=$CARGO_TARGET_DIR/dist
mkdir -p "$dist"

# qemu-user runs the binary with the multi-arch root `/` as its sysroot: there the loader and
# libc.so.6 both come from the libc6:<arch> package. The cross toolchain's directory
# (/usr/<gnu>) holds an older loader, and paired with the newer libc.so.6 that ld.so.cache
# points to, glibc's pthread_create spins forever on its stack list.
run_smoke() {
    bin=$1
    tmp=$(mktemp -d)
    # The sample, then 100 tasks in four layers, 16 at a time, each layer joined by one task.
    {
        printf 'name: fan\nconfig:\n  max_parallel: 16\ntasks:\n'
        for layer in 1 2 3 4; do
            for i in $(seq 1 25); do
                printf '  - name: t%d_%d\n    type: shell\n' "$layer" "$i"
                [ "$layer" = 1 ] || printf '    depends_on: [join%d]\n' $((layer - 1))
                printf '    config:\n      command: "echo %d %d"\n' "$layer" "$i"
            done
            printf '  - name: join%d\n    type: shell\n    depends_on: [' "$layer"
            for i in $(seq 1 25); do printf '%st%d_%d' "$([ "$i" = 1 ] || echo ', ')" "$layer" "$i"; done
            printf ']\n    config:\n      command: "true"\n'
        done
    } >"$tmp/fan.yaml"
    if ! (cd "$tmp" &&
        timeout 120 $qemu -L / "$bin" run "$root/examples/hello-world.yaml" >run.out 2>&1 &&
        timeout 300 $qemu -L / "$bin" run fan.yaml >>run.out 2>&1 &&
        grep -q 'Tasks: 104 succeeded, 0 failed' run.out); then
        cat "$tmp/run.out" >&2
        rm -rf "$tmp"
        echo "smoke run of $bin under $qemu failed" >&2
        exit 1
    fi
    rm -rf "$tmp"
}

printf '%-26s %10s  %s\n' binary bytes "needs"
for v in $variants; do
    dir=$cross_dir
    case $v in
        minimal) set -- --no-default-features ;;
        full) set -- ;;
        static)
            set -- --no-default-features
            dir=$CARGO_TARGET_DIR/cross-static
            ;;
    esac
    out=$dist/picoflow-$target-$v
    if [ "$v" = smallest ]; then
        size-budget/smallest.sh "$triple" "$out"
    elif [ "$v" = static ]; then
        RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$dir \
            cargo build -q --release -p picoflow-cli --target "$triple" "$@"
        cp "$dir/$triple/release/picoflow" "$out"
    else
        CARGO_TARGET_DIR=$dir cargo build -q --release -p picoflow-cli --target "$triple" "$@"
        cp "$dir/$triple/release/picoflow" "$out"
    fi
    run_smoke "$out"
    # The newest glibc symbol version the binary asks for is its glibc floor.
    floor=$("$gnu-objdump" -T "$out" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)
    libs=$("$gnu-objdump" -p "$out" | awk '$1 == "NEEDED" { printf "%s ", $2 }')
    [ -n "$libs" ] || libs="nothing (static)"
    printf '%-26s %10d  %s%s\n' "picoflow-$target-$v" "$(wc -c <"$out")" "$libs" "${floor:+($floor)}"
done
