#!/bin/bash
# vpi.sh: "the virtual Pi": an emulated arm64 Debian 12 (bookworm) machine with systemd, about
# as small and slow as a Raspberry Pi Zero 2 W (4 Cortex-A53 cores, 512 MB of memory, a disk
# throttled to 100 I/O operations a second like an SD card), to test PicoFlow where the host
# cannot (cgroup v2 with a delegated service cgroup, a real init, power cuts).
#
#   scripts/vpi.sh image                 build the base image, or reuse the cached one
#   scripts/vpi.sh run SCENARIO_DIR      boot a fresh copy of the image, run SCENARIO_DIR/run.sh
#                                        in it, print its output, power off; exits with its status
#   scripts/vpi.sh shell                 boot a fresh copy with the serial console on this
#                                        terminal, logged in as root (Ctrl-A x quits qemu)
#
# A scenario is a directory with an executable run.sh. `run` copies the directory into a run
# directory of its own (the scenario's files in the repository stay as they are), copies in the
# files named by SCENARIO_DIR/files (lines "DEST SRC": SRC is relative to the repository and
# may use ${VAR:-default}, DEST is relative to the scenario), and shares that directory with
# the machine over 9p as /scenario, read-write. A systemd unit of the image (vpi-run.service)
# runs /scenario/run.sh as root once the machine is up (after multi-user.target), writes its
# output to /scenario/.vpi/output and its exit status to /scenario/.vpi/status, and powers
# off. The run directory (with console.log, the machine's serial console) is kept under the
# cache and its path printed; `run` removes run directories older than the newest 10.
#
# Environment:
#   VPI_TIMEOUT   seconds after which `run` kills qemu (900); it exits with 124 then
#   VPI_SMP, VPI_MEM  cores and MB of memory (4 and 512)
#   VPI_IOPS      the disk's throttle, I/O operations per second (100)
#   XDG_CACHE_HOME  the cache is ${XDG_CACHE_HOME:-$HOME/.cache}/picoflow-vpi/
#
# Needs: `image`: root, debootstrap, qemu-user-static and binfmt-support (to run the second
# stage of debootstrap and apt in the arm64 root; the binfmt entry is registered for the build
# with the F flag and removed afterwards, and binfmt_misc unmounted again if the script mounted
# it), e2fsprogs, and network access to the Debian mirror apt is configured with. `run` and
# `shell`: qemu-system-aarch64 (package qemu-system-arm) and qemu-img (qemu-utils); no root.
# KVM is not used (it would run at host speed and some hosts' KVM refuses stock kernels).
#
# The cache: ${XDG_CACHE_HOME:-$HOME/.cache}/picoflow-vpi/image-KEY/ holds base.raw (ext4, 2
# GiB, sparse), vmlinuz and initrd.img. KEY is a hash of the image-building part of this
# script (between the "image:" markers below, the package list included): a change there
# builds a new image; delete old image-* directories by hand. Each boot writes to a qcow2
# overlay of base.raw that is removed afterwards: the base image is never changed.
#
# Timings on a 2-core x86_64 host shared with other work, TCG emulation (no KVM): image build,
# cold, about 3 min (debootstrap first stage 20 s, second stage under qemu-user 80 s, apt
# install of systemd and the kernel 85 s; the initramfs lists its modules, MODULES=list, which
# takes ~25 s instead of ~15 min under emulation); a cached image is found at once. Boot to the
# scenario's start: 31-36 s after the kernel starts. A whole `run` of tests/vpi/memory-limit
# (boot, scenario, power-off): 65-90 s. The image is 2 GiB sparse, about 600 MB on disk.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
self="$here/$(basename "$0")"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/picoflow-vpi"

die() { echo "vpi: $*" >&2; exit 2; }
say() { echo "vpi: $*" >&2; }

image_key() {
    sed -n '/^# >>> image:/,/^# <<< image:/p' "$self" | sha256sum | cut -c1-16
}

# >>> image: everything from here to the closing marker goes into the cache key.
VPI_PACKAGES="systemd systemd-sysv udev kmod e2fsprogs util-linux procps linux-image-arm64"
VPI_MODULES="virtio_mmio virtio_blk virtio_pci ext4 9p 9pnet 9pnet_virtio virtio_net"
VPI_SIZE=2G

mirror() {
    local m
    m=$(grep -hoE '^(deb|URIs:)[[:space:]]+[^[:space:]]+/debian/?([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | awk '{print $2}' | head -1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

# binfmt for arm64 binaries during the build, with the F flag (the interpreter is opened
# now, so the chroot needs no copy of qemu); undone by binfmt_off.
BINFMT_NAME=picoflow-vpi-aarch64
binfmt_mounted_here=no
binfmt_on() {
    local qemu
    qemu=$(command -v qemu-aarch64-static) || die "qemu-aarch64-static missing: apt-get install qemu-user-static"
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        binfmt_mounted_here=yes
    fi
    [ -e /proc/sys/fs/binfmt_misc/$BINFMT_NAME ] && echo -1 > /proc/sys/fs/binfmt_misc/$BINFMT_NAME
    printf '%s' ":$BINFMT_NAME:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$qemu:F" \
        > /proc/sys/fs/binfmt_misc/register
}
binfmt_off() {
    [ -e /proc/sys/fs/binfmt_misc/$BINFMT_NAME ] && echo -1 > /proc/sys/fs/binfmt_misc/$BINFMT_NAME
    if [ "$binfmt_mounted_here" = yes ]; then
        umount /proc/sys/fs/binfmt_misc || true
    fi
}

build_cleanup() {
    local root=$1
    for m in proc sys dev/pts dev; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true
    done
    binfmt_off
}

build_image() {
    local out=$1 tmp root t0 mirror
    [ "$(id -u)" = 0 ] || die "building the image needs root (debootstrap, chroot, binfmt)"
    for c in debootstrap mkfs.ext4 qemu-aarch64-static; do
        command -v $c >/dev/null || die "$c missing (apt-get install debootstrap e2fsprogs qemu-user-static binfmt-support)"
    done
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/build.XXXXXX")
    root=$tmp/root
    trap "build_cleanup '$root'; rm -rf '$tmp'" EXIT
    mirror=$(mirror)
    t0=$SECONDS
    say "debootstrap (first stage) from $mirror"
    debootstrap --arch=arm64 --foreign --variant=minbase bookworm "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
        || { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
    binfmt_on
    say "debootstrap (second stage, emulated) after $((SECONDS - t0)) s"
    chroot "$root" /debootstrap/debootstrap --second-stage >"$tmp/second.log" 2>&1 \
        || { tail -20 "$tmp/second.log" >&2; tail -20 "$root/debootstrap/debootstrap.log" >&2 || true; die "second stage failed"; }
    mount -t proc proc "$root/proc"
    mount -t sysfs sys "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
    # The small initramfs, set before the kernel package makes it.
    mkdir -p "$root/etc/initramfs-tools/conf.d"
    echo "MODULES=list" > "$root/etc/initramfs-tools/conf.d/vpi.conf"
    printf '%s\n' $VPI_MODULES > "$root/etc/initramfs-tools/modules"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    echo "deb $mirror bookworm main" > "$root/etc/apt/sources.list"
    say "apt-get install $VPI_PACKAGES after $((SECONDS - t0)) s"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update >"$tmp/apt.log" 2>&1
    chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confold $VPI_PACKAGES >>"$tmp/apt.log" 2>&1 \
        || { tail -30 "$tmp/apt.log" >&2; die "apt-get install failed"; }
    chroot "$root" apt-get clean
    rm -f "$root/usr/sbin/policy-rc.d"
    rm -rf "$root"/var/lib/apt/lists/*
    build_cleanup "$root"
    trap "rm -rf '$tmp'" EXIT

    # The machine's configuration.
    echo vpi > "$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 vpi\n' > "$root/etc/hosts"
    printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
    : > "$root/etc/machine-id"
    sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow"
    mkdir -p "$root/etc/systemd/system/serial-getty@ttyAMA0.service.d"
    cat > "$root/etc/systemd/system/serial-getty@ttyAMA0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF
    mkdir -p "$root/scenario"
    cat > "$root/usr/local/sbin/vpi-run" <<'EOF'
#!/bin/sh
# Runs /scenario/run.sh (the host's 9p share "scenario"), keeps its output and status in
# /scenario/.vpi/, and powers the machine off.
echo "vpi-run: start $(cat /proc/uptime | cut -d' ' -f1) s after boot" > /dev/console
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 scenario /scenario; then
    mkdir -p /scenario/.vpi
    echo "$(cut -d' ' -f1 /proc/uptime)" > /scenario/.vpi/started
    cd /scenario && sh ./run.sh > /scenario/.vpi/output 2>&1
    echo $? > /scenario/.vpi/status
    sync
    umount /scenario
else
    echo "vpi-run: cannot mount the 9p share scenario" > /dev/console
fi
echo "vpi-run: done $(cut -d' ' -f1 /proc/uptime) s after boot" > /dev/console
systemctl poweroff --no-block
EOF
    chmod 755 "$root/usr/local/sbin/vpi-run"
    cat > "$root/etc/systemd/system/vpi-run.service" <<'EOF'
[Unit]
Description=vpi: run /scenario/run.sh and power off
ConditionKernelCommandLine=vpi.run=1
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vpi-run
StandardOutput=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
    ln -sf /etc/systemd/system/vpi-run.service "$root/etc/systemd/system/multi-user.target.wants/vpi-run.service"

    say "mkfs.ext4 -d after $((SECONDS - t0)) s"
    mkdir -p "$tmp/out"
    cp "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)" "$tmp/out/vmlinuz"
    cp "$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)" "$tmp/out/initrd.img"
    mkfs.ext4 -q -L vpi -d "$root" "$tmp/out/base.raw" $VPI_SIZE
    rm -rf "$out"
    mv "$tmp/out" "$out"
    rm -rf "$tmp"
    trap - EXIT
    say "image built in $((SECONDS - t0)) s: $out"
}
# <<< image: end of the part in the cache key.

image_dir() { echo "$cache/image-$(image_key)"; }

cmd_image() {
    local dir
    dir=$(image_dir)
    if [ -f "$dir/base.raw" ] && [ -f "$dir/vmlinuz" ] && [ -f "$dir/initrd.img" ]; then
        say "image cached: $dir"
    else
        build_image "$dir"
    fi
}

need_qemu() {
    command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 missing: apt-get install qemu-system-arm"
    command -v qemu-img >/dev/null || die "qemu-img missing: apt-get install qemu-utils"
    [ -f "$(image_dir)/base.raw" ] || die "no image for this script yet: run scripts/vpi.sh image (as root)"
}

# qemu_args IMAGE_DIR OVERLAY APPEND: sets QEMU_ARGS, the machine on OVERLAY.
qemu_args() {
    local dir=$1 overlay=$2 append=$3
    # cache=none needs O_DIRECT; fall back to writethrough (still syncs each write) without it.
    local cache_mode=none
    if ! dd if=/dev/zero of="$overlay.odirect" bs=4096 count=1 oflag=direct 2>/dev/null; then
        cache_mode=writethrough
    fi
    rm -f "$overlay.odirect"
    QEMU_ARGS=(-M virt -cpu cortex-a53 -smp "${VPI_SMP:-4}" -m "${VPI_MEM:-512}" \
        -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" \
        -append "root=/dev/vda rw console=ttyAMA0 $append" \
        -drive "file=$overlay,if=none,id=d0,format=qcow2,cache=$cache_mode,throttling.iops-total=${VPI_IOPS:-100}" \
        -device virtio-blk-device,drive=d0 -nic none)
}

new_overlay() {
    local dir=$1 overlay=$2
    qemu-img create -q -f qcow2 -b "$dir/base.raw" -F raw "$overlay"
}

cmd_shell() {
    need_qemu
    local dir overlay
    dir=$(image_dir)
    overlay=$(mktemp "$cache/shell.XXXXXX.qcow2")
    trap "rm -f '$overlay'" EXIT
    new_overlay "$dir" "$overlay"
    say "booting (about 30 s); logged in as root on the serial console; 'poweroff' or Ctrl-A x ends it"
    qemu_args "$dir" "$overlay" ""
    qemu-system-aarch64 "${QEMU_ARGS[@]}" -nographic
}

cmd_run() {
    [ $# -ge 1 ] || usage
    local scen=$1 dir run overlay t0 t_boot rc status started
    [ -f "$scen/run.sh" ] || die "$scen/run.sh missing"
    need_qemu
    dir=$(image_dir)
    mkdir -p "$cache/runs"
    run=$(mktemp -d "$cache/runs/$(date +%Y%m%d-%H%M%S)-$(basename "$scen").XXXX")
    cp -a "$scen/." "$run/"
    rm -rf "$run/.vpi"
    if [ -f "$scen/files" ]; then
        while read -r dest src; do
            case $dest in '' | '#'*) continue ;; esac
            src=$(cd "$repo" && eval "echo $src")
            case $src in /*) ;; *) src="$repo/$src" ;; esac
            [ -e "$src" ] || die "$scen/files: $src missing"
            mkdir -p "$(dirname "$run/$dest")"
            cp -a "$src" "$run/$dest"
        done < "$scen/files"
    fi
    overlay="$run/disk.qcow2"
    new_overlay "$dir" "$overlay"
    qemu_args "$dir" "$overlay" "vpi.run=1"
    t0=$SECONDS
    set +e
    timeout -s KILL "${VPI_TIMEOUT:-900}" qemu-system-aarch64 "${QEMU_ARGS[@]}" \
        -display none -monitor none -serial "file:$run/console.log" \
        -virtfs "local,path=$run,mount_tag=scenario,security_model=none"
    rc=$?
    set -e
    rm -f "$overlay"
    local total=$((SECONDS - t0))
    if [ -f "$run/.vpi/output" ]; then
        cat "$run/.vpi/output"
    fi
    started=$(cat "$run/.vpi/started" 2>/dev/null || echo "?")
    status=$(cat "$run/.vpi/status" 2>/dev/null || echo "")
    say "qemu exit $rc; scenario started ${started} s after the kernel; whole run ${total} s; status ${status:-none}"
    say "run directory (console.log, the share): $run"
    ls -dt "$cache"/runs/*/ 2>/dev/null | tail -n +11 | xargs -r rm -rf
    if [ $rc -eq 137 ] || [ $rc -eq 124 ]; then
        say "timeout: qemu killed after ${VPI_TIMEOUT:-900} s"
        tail -20 "$run/console.log" >&2 || true
        exit 124
    fi
    [ -n "$status" ] || { say "no status: the scenario did not finish"; tail -30 "$run/console.log" >&2 || true; exit 3; }
    exit "$status"
}

usage() {
    sed -n '7,11p' "$self" >&2
    exit 2
}

case "${1:-}" in
    image) cmd_image ;;
    run) shift; cmd_run "$@" ;;
    shell) cmd_shell ;;
    *) usage ;;
esac
