#!/bin/sh
# Installs the system tools PicoFlow's tests use: a real OpenSSH server for the ssh
# executor, the sqlite3 CLI for the export, promtool for the metrics format, OpenSSL headers
# for libssh2/libcurl, the openssl command for a TLS server, Podman (with runc) and a static
# busybox for the container engine and test image of the docker executor, headless Chromium
# for the web UI, hyperfine, make and GNU time for the benchmarks, and debootstrap for the
# check that these install steps work on a new machine (scripts/fresh-install-check.sh),
# nats-server (with JetStream) for the fleet, libfaketime (Debian's faketime) to step the
# daemon's wall clock in the clock tests, and python3 and ionice for a task's limits.
# Safe to run again, from any state of a Debian 12 machine.
set -eu

installed() {
    [ "$(dpkg-query -W -f '${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

need=""
command -v /usr/sbin/sshd >/dev/null 2>&1 || need="$need openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || need="$need openssh-client"
command -v sqlite3 >/dev/null 2>&1 || need="$need sqlite3"
command -v promtool >/dev/null 2>&1 || need="$need prometheus"
command -v hyperfine >/dev/null 2>&1 || need="$need hyperfine"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
installed libssl-dev || need="$need libssl-dev"
command -v make >/dev/null 2>&1 || need="$need make"
[ -x /usr/bin/time ] || need="$need time"
command -v cc >/dev/null 2>&1 || need="$need gcc"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v podman >/dev/null 2>&1 || need="$need podman"
command -v runc >/dev/null 2>&1 || need="$need runc"
[ -x /usr/lib/podman/netavark ] || command -v netavark >/dev/null 2>&1 || need="$need netavark"
installed busybox-static || need="$need busybox-static"
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
command -v nats-server >/dev/null 2>&1 || need="$need nats-server"
installed libfaketime || need="$need faketime"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v ionice >/dev/null 2>&1 || need="$need util-linux"

if [ -n "$need" ]; then
    echo "installing:$need"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    # An index that cannot be fetched (a foreign architecture's, say) must not stop the
    # install of packages whose index did arrive.
    $SUDO apt-get update -qq || echo "apt-get update reported errors; installing anyway"
    # The prometheus package would start a server on install; policy-rc.d keeps it off.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $need
fi

for tool in /usr/sbin/sshd ssh-keygen sqlite3 promtool hyperfine make /usr/bin/time chromium openssl podman runc /bin/busybox debootstrap nats-server; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing after install: $tool" >&2; exit 1; }
done
installed libfaketime || { echo "missing after install: libfaketime" >&2; exit 1; }
echo "test tools present: sshd, ssh-keygen, sqlite3, promtool, hyperfine, make, time, chromium, openssl, podman, runc, busybox, debootstrap, nats-server, libfaketime"
