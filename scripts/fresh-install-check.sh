#!/bin/sh
# Runs PicoFlow's install steps (scripts/install-test-deps.sh and the install part of
# scripts/cross.sh for aarch64 and armv7) in a new Debian 12 root file system, the way they run
# on a new machine, and fails if any of them fails. Only apt work happens there; nothing is built.
#
# The root is bootstrapped with debootstrap (minimal variant) from the mirror apt is configured
# with. It is made outdated the way a machine installed from an older image is: its OpenSSL
# (libssl3, libssl-dev, openssl) comes from the suite that holds the oldest OpenSSL the mirror
# still has, and that suite is then left out of its sources, so the installed version is in no
# index and the archive's candidate is newer. Needs root (or sudo) for debootstrap and chroot;
# takes a few minutes, most of it downloads. Nothing is cached: each run starts from nothing.
set -eu
cd "$(dirname "$0")/.."
project=$PWD
native=$(dpkg --print-architecture)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
command -v debootstrap >/dev/null 2>&1 || {
    echo "debootstrap is missing (scripts/install-test-deps.sh installs it)" >&2
    exit 1
}

# The site of the host's index for suite $1 (Debian's archive or its security archive).
site_of() {
    apt-get indextargets --format '$(SITE) $(RELEASE)' 'Created-By: Packages' |
        awk -v suite="$1" '$2 == suite { print $1; exit }'
}
main=$(site_of bookworm)
security=$(site_of bookworm-security)
[ -n "$main" ] && [ -n "$security" ] || {
    echo "apt on this machine lists no bookworm and bookworm-security suites to copy" >&2
    exit 1
}

work=$(mktemp -d)
root=$work/root
cleanup() {
    $SUDO umount "$root/proc" 2>/dev/null || true
    $SUDO rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_root() {
    $SUDO chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 /bin/sh -eu -c "$1"
}
sources() {
    for suite in "$@"; do
        case $suite in
            *-security) echo "deb $security $suite main" ;;
            *) echo "deb $main $suite main" ;;
        esac
    done | $SUDO tee "$root/etc/apt/sources.list" >/dev/null
}

start=$(date +%s)
echo "bootstrapping a minimal Debian 12 from $main"
if ! $SUDO debootstrap --variant=minbase bookworm "$root" "$main" >"$work/debootstrap.log" 2>&1; then
    tail -20 "$work/debootstrap.log" >&2
    echo "debootstrap of bookworm from $main failed" >&2
    exit 1
fi
$SUDO cp /etc/resolv.conf "$root/etc/resolv.conf"
$SUDO mount -t proc proc "$root/proc"

# The suite with the oldest OpenSSL, read from the root's own apt with every suite listed.
sources bookworm bookworm-updates bookworm-security
in_root 'apt-get update -qq'
oldest=$(in_root 'apt-cache madison libssl-dev' |
    awk -F'|' '{ gsub(/ /, "", $2); split($3, s, " "); print $2, s[2] }' |
    sort -V -k1,1 | head -1)
candidate=$(in_root 'apt-cache policy libssl-dev' | awk '$1 == "Candidate:" { print $2 }')
old_version=${oldest% *}
old_suite=${oldest#* }
old_suite=${old_suite%%/*}
if [ "$old_version" = "$candidate" ]; then
    echo "the mirror offers one OpenSSL only ($candidate): the root's packages are current" >&2
    final="bookworm bookworm-updates bookworm-security"
else
    echo "outdating the root: OpenSSL $old_version from $old_suite (the candidate is $candidate)"
    sources "$old_suite"
    in_root 'apt-get update -qq && apt-get install -y -qq --no-install-recommends libssl-dev openssl' \
        >"$work/outdate.log" 2>&1 || {
        cat "$work/outdate.log" >&2
        exit 1
    }
    final=""
    for suite in bookworm bookworm-updates bookworm-security; do
        [ "$suite" = "$old_suite" ] || final="$final $suite"
    done
fi
# shellcheck disable=SC2086
sources $final
echo "sources: $final; installed: libssl-dev $(in_root "dpkg-query -W -f '\${Version}' libssl-dev" 2>/dev/null || echo none)"

$SUDO mkdir -p "$root/picoflow"
$SUDO cp -r "$project/scripts" "$project/Cargo.toml" "$root/picoflow/"
$SUDO umount "$root/proc"
base=$work/base
$SUDO mv "$root" "$base"

# Each step starts from its own copy of the outdated root: what one step upgrades (a package
# that needs a newer libssl3, say) must not hide what another would do on its own.
status=0
for step in scripts/install-test-deps.sh "scripts/cross.sh aarch64 --install-only" \
    "scripts/cross.sh armv7 --install-only"; do
    printf '\n--> in a fresh root: %s\n' "$step"
    $SUDO rm -rf "$root"
    $SUDO cp -a "$base" "$root"
    $SUDO mount -t proc proc "$root/proc"
    if ! in_root "cd /picoflow && $step" >"$work/step.log" 2>&1; then
        tail -30 "$work/step.log" >&2
        echo "install step failed in a fresh Debian 12 root: $step" >&2
        status=1
    else
        tail -2 "$work/step.log"
        case $step in
            *cross.sh*)
                foreign=arm64
                case $step in *armv7*) foreign=armhf ;; esac
                for p in libssl-dev libc6 libstd-rust-web-dev; do
                    line=$(in_root "dpkg-query -W -f '\${Version} ' $p:$native $p:$foreign")
                    echo "$p: $line($native $foreign)"
                    [ "$(echo "$line" | tr ' ' '\n' | sed '/^$/d' | sort -u | wc -l)" = 1 ] || {
                        echo "$p is not at one version on both architectures" >&2
                        status=1
                    }
                done
                ;;
        esac
    fi
    $SUDO umount "$root/proc"
done
echo "fresh-root install check took $(($(date +%s) - start)) s"
exit $status
