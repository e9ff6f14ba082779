#!/usr/bin/env bash
# PicoFlow's fleet benchmark: one local nats-server (JetStream) and N daemons, each in a
# directory of its own, measured on what the fleet promises.
#
# usage: benches/fleet.sh [N]            (N daemons, default 50)
#
# environment:
#   PICOFLOW          the binary with the fleet feature (default target/release/picoflow)
#   PICOFLOW_NOFLEET  a build without the feature, for the RSS comparison (optional:
#                     without it only the fleet binary without [fleet] is compared)
#   NATS_PORT         first of two client ports (default 24222; the catch-up server
#                     takes the next); MON_PORT likewise for the monitoring ports (28222)
#   CATCHUP           executions made while the server is down (default 1440)
#   BENCH_DIR         where the temporary directory goes (default $TMPDIR or /tmp)
#
# Measures, in this order:
#   join     time from the first daemon's start until all N are in the inventory
#   rss      VmRSS / RssAnon of each daemon 30 s after the last one started
#   msgs     the server's in_msgs over 60 s of idle, per node and minute (/varz)
#   apply    `fleet apply --to all`: until every node holds the file (<state>.fleet/),
#            then until every node reported it applied (`fleet workflows`)
#   run      `fleet run WF --on all --wait`: from the last task's end (each task writes
#            `date +%s.%N`) to each result line and to the command's exit
#   catchup  one daemon whose own server is stopped; CATCHUP executions are recorded by
#            `picoflow run` on its state file meanwhile (the daemon's outbox marks records
#            of other processes too); the server is started again and the time until the
#            results stream holds them all is measured (/jsz), then `fleet history` checks
#            that each execution is there once
#   rss      the same daemons without [fleet] (fleet binary, and PICOFLOW_NOFLEET if set)
# and prints a Markdown table. Needs: nats-server (2.9+), curl, jq. Everything it starts is
# stopped, and its temporary directory removed, when it exits.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-50}
PF=${PICOFLOW:-$ROOT/target/release/picoflow}
PF_NOFLEET=${PICOFLOW_NOFLEET:-}
PORT=${NATS_PORT:-24222}
MON=${MON_PORT:-28222}
PORT2=$((PORT + 1))
MON2=$((MON + 1))
CATCHUP=${CATCHUP:-1440}

for tool in nats-server curl jq; do
    command -v "$tool" >/dev/null || { echo "fleet.sh: needs $tool" >&2; exit 2; }
done
[ -x "$PF" ] || { echo "fleet.sh: no binary at $PF (set PICOFLOW)" >&2; exit 2; }
"$PF" --version | grep -q '+fleet' || { echo "fleet.sh: $PF is built without the fleet feature" >&2; exit 2; }

TMP=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/picoflow-fleet.XXXXXX")
PIDS=()        # every process started here, stopped on exit
NATS_PID=
NATS2_PID=

cleanup() {
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# A sleep that a signal ends at once (bash runs traps only between foreground commands).
nap() {
    sleep "$1" &
    PIDS+=("$!")
    wait "$!"
}
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); log "$1: $3 ($4)"; }
met() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "NOT met"; fi; }

# Waits (up to $2 s, default 30) until the command in $1 succeeds.
wait_for() {
    local deadline=$(( $(date +%s) + ${2:-30} ))
    until eval "$1" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { log "timed out waiting for: $1"; return 1; }
        sleep 0.1
    done
}

# start_nats PORT MONPORT STOREDIR: sets LAST_PID.
start_nats() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
        log "port $1 or $2 is taken (set NATS_PORT and MON_PORT)"
        return 1
    fi
    nats-server -a 127.0.0.1 -p "$1" -m "$2" -js -sd "$3" >>"$TMP/nats-$1.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_for "curl -sf http://127.0.0.1:$2/healthz?js-enabled-only=true" 30
}

stop_pid() {
    kill "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

varz() { curl -sf "http://127.0.0.1:$1/varz" | jq -r ".$2"; }

# A node's directory: picoflow.toml (with [fleet] when $3 is a URL), a local workflow
# that fires once a day, a log directory.
make_node() {
    local dir=$1 name=$2 url=$3
    mkdir -p "$dir/wf" "$dir/logs"
    {
        echo "db_path = \"$dir/state.redb\""
        echo "log_level = \"info\""
        echo "[metrics]"
        echo "enabled = false"
        echo "[logs]"
        echo "dir = \"$dir/logs\""
        if [ -n "$url" ]; then
            echo "[fleet]"
            echo "url = \"$url\""
            echo "node = \"$name\""
            echo "labels = [\"bench\"]"
        fi
    } >"$dir/picoflow.toml"
    cat >"$dir/wf/local.yaml" <<EOF
name: local
schedule: "0 0 3 * * *"
tasks:
  - name: t
    type: shell
    config:
      command: "true"
EOF
}

# start_daemon BINARY DIR NAME: sets LAST_PID.
start_daemon() {
    (cd "$2" && BENCH_NODE=$3 exec "$1" daemon start wf >"$2/daemon.log" 2>&1) &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# rss_of PID...: "mean VmRSS, max VmRSS, mean RssAnon (KiB), mean threads"
rss_of() {
    local p
    for p in "$@"; do
        awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^Threads:/ { t = $2 }
             END { print r, a, t }' "/proc/$p/status"
    done | awk '{ r += $1; a += $2; t += $3; n++; if ($1 > m) m = $1 }
                END { printf "%.0f %.0f %.0f %.1f\n", r / n, m, a / n, t / n }'
}

# idle_rss BINARY LABEL URL: N daemons (with [fleet] when URL is set), RSS 30 s after the
# last started, stopped again. Sets IDLE to rss_of's figures.
idle_rss() {
    local bin=$1 label=$2 url=$3 pids=() i
    for i in $(seq 1 "$N"); do
        make_node "$TMP/$label/n$i" "n$i" "$url"
        start_daemon "$bin" "$TMP/$label/n$i" "n$i"
        pids+=("$LAST_PID")
    done
    nap 30
    for p in "${pids[@]}"; do
        kill -0 "$p" 2>/dev/null || { log "$label: daemon $p died"; }
    done
    IDLE=$(rss_of "${pids[@]}")
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
}

URL="nats://127.0.0.1:$PORT"
OP=$TMP/operator
mkdir -p "$OP"
printf '[fleet]\nurl = "%s"\n' "$URL" >"$OP/picoflow.toml"
fleet() { "$PF" --config "$OP/picoflow.toml" --log-level error fleet "$@"; }

log "$N daemons, $("$PF" --version), $(nats-server --version), in $TMP"
start_nats "$PORT" "$MON" "$TMP/js" || exit 1
NATS_PID=$LAST_PID

# --- join ---------------------------------------------------------------------------
DAEMONS=()
t0=$(now)
for i in $(seq 1 "$N"); do
    make_node "$TMP/fleet/n$i" "n$i" "$URL"
    start_daemon "$PF" "$TMP/fleet/n$i" "n$i"
    DAEMONS+=("$LAST_PID")
done
t_started=$(now)
alive() { fleet nodes --format json | jq '[.[] | select(.alive)] | length'; }
wait_for "[ \"\$(alive)\" -eq $N ]" 120 || exit 1
t1=$(now)
row "$N daemons started, until all are in \`fleet nodes\`" "-" \
    "$(calc "$t1 - $t0" 1) s (starting them took $(calc "$t_started - $t0" 1) s)" "-"

# --- idle RSS -------------------------------------------------------------------------
nap "$(calc "30 - ($(now) - $t_started)" 0 | sed 's/^-.*/0/')"
read -r RSS_F RSS_F_MAX ANON_F THREADS_F <<<"$(rss_of "${DAEMONS[@]}")"

# --- idle messages --------------------------------------------------------------------
in0=$(varz "$MON" in_msgs); out0=$(varz "$MON" out_msgs); ts0=$(now)
nap 60
in1=$(varz "$MON" in_msgs); out1=$(varz "$MON" out_msgs); ts1=$(now)
per=$(calc "($in1 - $in0) / $N / (($ts1 - $ts0) / 60)" 2)
row "messages into the server per idle node and minute (\`/varz\` in_msgs over 60 s)" "≤ 6" \
    "$per (out of the server: $(calc "($out1 - $out0) / $N / (($ts1 - $ts0) / 60)" 2))" \
    "$(met "$per <= 6")"

# --- apply ----------------------------------------------------------------------------
ENDS=$TMP/ends
cat >"$OP/bench.yaml" <<EOF
name: bench
tasks:
  - name: work
    type: shell
    config:
      command: sleep
      args: ["2"]
  - name: last
    type: shell
    depends_on: [work]
    config:
      command: sh
      args: ["-c", "printf '%s %s\\\\n' \"\$BENCH_NODE\" \"\$(date +%s.%N)\" >> $ENDS"]
EOF
t0=$(now)
rev=$(fleet apply --to all "$OP/bench.yaml" | sed -n 's/.*(revision \([0-9]*\)).*/\1/p')
t_pub=$(now)
[ -n "$rev" ] || { log "fleet apply failed"; exit 1; }
files() { grep -l "revision=$rev\$" "$TMP"/fleet/n*/state.redb.fleet/bench.yaml 2>/dev/null | wc -l; }
wait_for "[ \"\$(files)\" -eq $N ]" 60
t_files=$(now)
reported() {
    fleet workflows --format json |
        jq "[.nodes[] | select(.workflow == \"bench\" and .status == \"applied\" and .revision == $rev)] | length"
}
wait_for "[ \"\$(reported)\" -eq $N ]" 60
t_rep=$(now)
applied_s=$(calc "$t_rep - $t0" 2)
row "\`fleet apply --to all\`, until all $N nodes reported it applied" "≤ 5 s" \
    "$applied_s s (the command $(calc "$t_pub - $t0" 2) s; every file written $(calc "$t_files - $t0" 2) s)" \
    "$(met "$applied_s <= 5")"

# --- run ------------------------------------------------------------------------------
sleep 2
: >"$ENDS"
fleet run bench --on all --wait 2>"$TMP/run.err" |
    while IFS= read -r line; do printf '%s %s\n' "$(now)" "$line"; done >"$TMP/run.out"
rc=${PIPESTATUS[0]}
t_exit=$(now)
ok=$(grep -c ' success ' "$TMP/run.out")
ended=$(wc -l <"$ENDS")
last_end=$(awk '{ if ($2 > m) m = $2 } END { printf "%.6f", m }' "$ENDS")
first_end=$(awk 'NR == 1 || $2 < m { m = $2 } END { printf "%.6f", m }' "$ENDS")
# Each result line after its node's task ended.
worst=$(awk 'NR == FNR { end[$1] = $2; next }
             $3 == "success" { d = $1 - end[$2]; if (d > m) m = d } END { printf "%.2f", m }' \
        "$ENDS" "$TMP/run.out")
lag=$(calc "$t_exit - $last_end" 2)
row "\`fleet run bench --on all --wait\`: last task's end to the command's exit" "≤ 5 s" \
    "$lag s (exit $rc, $ok/$N succeeded, $ended tasks ended over $(calc "$last_end - $first_end" 2) s; slowest result line $worst s after its node's task ended)" \
    "$(met "$lag <= 5 && $ok == $N && $rc == 0")"

# --- offline catch-up -----------------------------------------------------------------
C=$TMP/catchup
make_node "$C" catchup "nats://127.0.0.1:$PORT2"
cat >"$C/tick.yaml" <<EOF
name: tick
tasks:
  - name: t
    type: shell
    config:
      command: "true"
EOF
cp "$C/tick.yaml" "$C/wf/tick.yaml"
start_nats "$PORT2" "$MON2" "$TMP/js2" || exit 1
NATS2_PID=$LAST_PID
start_daemon "$PF" "$C" catchup
CATCHUP_PID=$LAST_PID
FLEET2="$TMP/op2.toml"
printf '[fleet]\nurl = "nats://127.0.0.1:%s"\n' "$PORT2" >"$FLEET2"
fleet2() { "$PF" --config "$FLEET2" --log-level error fleet "$@"; }
wait_for "fleet2 nodes --format json | jq -e 'length == 1'" 30 || exit 1
stream_msgs() {
    curl -sf "http://127.0.0.1:$MON2/jsz?accounts=true&streams=true" |
        jq '[.account_details[]?.stream_detail[]? | select(.name == "picoflow-results") | .state.messages] | add // 0'
}
stop_pid "$NATS2_PID"
log "catch-up: server down; recording $CATCHUP executions"
t0=$(now)
(
    cd "$C" || exit 1
    for i in $(seq 1 "$CATCHUP"); do
        "$PF" --log-level error run tick.yaml >/dev/null 2>&1 || echo "run $i failed" >&2
    done
) &
PIDS+=("$!")
wait "$!"
t_made=$(now)
log "catch-up: $CATCHUP executions in $(calc "$t_made - $t0" 1) s; waiting 40 s more offline"
nap 40
kill -0 "$CATCHUP_PID" || { log "catch-up daemon died"; exit 1; }
t0=$(now)
start_nats "$PORT2" "$MON2" "$TMP/js2" || exit 1
wait_for "[ \"\$(stream_msgs)\" -ge $CATCHUP ]" 300
t_all=$(now)
sleep 3
msgs=$(stream_msgs)
distinct=$(fleet2 history --node catchup --workflow tick --format json --limit 100000 |
    jq '[.[] | select(.execution.status == "success") | .execution.id] | unique | length')
catch_s=$(calc "$t_all - $t0" 1)
row "offline catch-up: $CATCHUP executions made while the server was down, from its restart until the stream holds them all" \
    "≤ 30 s" \
    "$catch_s s ($msgs messages in the stream, $distinct distinct successful executions in \`fleet history\`)" \
    "$(met "$catch_s <= 30 && $msgs == $CATCHUP && $distinct == $CATCHUP")"
stop_pid "$CATCHUP_PID"

# --- RSS without the fleet ------------------------------------------------------------
for p in "${DAEMONS[@]}"; do kill "$p" 2>/dev/null; done
for p in "${DAEMONS[@]}"; do wait "$p" 2>/dev/null; done
idle_rss "$PF" plain ""
read -r RSS_P RSS_P_MAX ANON_P THREADS_P <<<"$IDLE"
mib() { calc "$1 / 1024" 2; }
if [ -n "$PF_NOFLEET" ]; then
    idle_rss "$PF_NOFLEET" nofeature ""
    read -r RSS_N RSS_N_MAX ANON_N THREADS_N <<<"$IDLE"
    cost=$(calc "($RSS_F - $RSS_N) / 1024" 2)
    row "idle daemon RSS with the fleet, vs the build without the feature" "≤ +3 MiB" \
        "$(mib "$RSS_F") vs $(mib "$RSS_N") MiB = +$cost MiB (anonymous $(mib "$ANON_F") vs $(mib "$ANON_N") MiB; $THREADS_F vs $THREADS_N threads; the fleet build without [fleet]: $(mib "$RSS_P") MiB)" \
        "$(met "$cost <= 3")"
else
    cost=$(calc "($RSS_F - $RSS_P) / 1024" 2)
    row "idle daemon RSS with [fleet], vs the same binary without" "≤ +3 MiB" \
        "$(mib "$RSS_F") vs $(mib "$RSS_P") MiB = +$cost MiB (anonymous $(mib "$ANON_F") vs $(mib "$ANON_P") MiB; $THREADS_F vs $THREADS_P threads)" \
        "$(met "$cost <= 3")"
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo
echo "Measured $(date +%F) on $(uname -m) Linux $(uname -r), $cpu, $(nproc) cores, by \`benches/fleet.sh $N\`"
echo "($("$PF" --version | cut -d' ' -f1-2), $(nats-server --version), all on this host)."
echo
echo "| measure | target | result | |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
