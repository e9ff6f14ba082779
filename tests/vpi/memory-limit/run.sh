#!/bin/sh
# In the virtual Pi (scripts/vpi.sh run tests/vpi/memory-limit), as root at boot: installs
# PicoFlow as README "On a Raspberry Pi" says, with examples/picoflow.service (Delegate=yes,
# User=picoflow), lets the daemon run memory-limit.yaml once on its schedule, and checks that
# a task's `limits: {memory: 50MB}` became its cgroup's memory.max: the task past it is killed
# by the kernel, the one within it succeeds, PicoFlow moved itself into picoflow.self and the
# service's cgroup passes the memory controller on. Exit 0 only if all of that holds.
# The binary comes from ./files: $PICOFLOW_BIN on the host, by default
# target/dist/picoflow-aarch64-full (scripts/cross.sh aarch64 full). As well it shows the
# cgroup files PicoFlow's user sees, and the same leaf-then-memory steps done by hand in a
# delegated unit of their own, so that a failure says whether the kernel or PicoFlow refused.
set -u
S=/scenario
fail=0
check() { # check NAME CONDITION-STATUS
    if [ "$2" = 0 ]; then echo "PASS: $1"; else echo "FAIL: $1"; fail=1; fi
}

echo "== machine"
uname -a
echo "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"

install -m 755 $S/picoflow /usr/local/bin/picoflow
useradd --system --home /opt/picoflow picoflow
mkdir -p /opt/picoflow/workflows /var/lib/picoflow
cp $S/memory-limit.yaml /opt/picoflow/workflows/
chown -R picoflow:picoflow /opt/picoflow /var/lib/picoflow
cp $S/picoflow.service /etc/systemd/system/
picoflow --version
runuser -u picoflow -- picoflow validate /opt/picoflow/workflows/memory-limit.yaml || fail=1
systemctl daemon-reload
systemctl enable --now picoflow 2>&1
t0=$(cut -d' ' -f1 /proc/uptime)

db=/var/lib/picoflow/picoflow.redb
status() { runuser -u picoflow -- picoflow --db-path $db status --format json 2>&1; }
# Wait until one execution has finished (both tasks in a final state).
json=""
i=0
while [ $i -lt 120 ]; do
    json=$(status)
    if printf '%s' "$json" | grep -q '"status": "\(success\|failed\|completed\|succeeded\)"' &&
        ! printf '%s' "$json" | grep -q '"status": "\(running\|pending\)"'; then
        break
    fi
    sleep 2
    i=$((i + 1))
done
echo "waited $(( $(cut -d. -f1 /proc/uptime) - ${t0%.*} )) s for a finished execution"

echo "== picoflow status --format json"
echo "$json"
echo "== journalctl -u picoflow"
journalctl -u picoflow --no-pager -o cat | tail -40
echo "== cgroups"
svc=/sys/fs/cgroup/system.slice/picoflow.service
echo "$svc/cgroup.subtree_control: $(cat $svc/cgroup.subtree_control)"
echo "$svc/cgroup.procs: $(cat $svc/cgroup.procs | tr '\n' ' ')"
ls $svc | grep -v '^[a-z]*\.' ; ls -d $svc/*/ 2>/dev/null
echo "$svc/picoflow.self/cgroup.procs: $(cat $svc/picoflow.self/cgroup.procs 2>/dev/null | tr '\n' ' ')"
echo "$svc/cgroup.controllers: $(cat $svc/cgroup.controllers)"
echo "/sys/fs/cgroup/system.slice/cgroup.subtree_control: $(cat /sys/fs/cgroup/system.slice/cgroup.subtree_control)"
ls -l $svc/cgroup.procs $svc/cgroup.subtree_control $svc/cgroup.threads
# What a task cgroup's memory.max looks like to PicoFlow's user before the memory controller
# is enabled below the service: the file is missing; opening it to write gives EACCES with
# O_CREAT (as a shell's > or a plain write of a file does) and ENOENT without.
probe=$svc/vpi-probe
runuser -u picoflow -- mkdir $probe
echo "probe cgroup $probe: $(ls $probe | grep -c '^memory\.') memory.* files"
runuser -u picoflow -- sh -c "echo 52428800 > $probe/memory.max" 2>&1 | sed 's/^/  with O_CREAT: /'
echo 52428800 | runuser -u picoflow -- dd of=$probe/memory.max conv=nocreat,notrunc status=none 2>&1 | sed 's/^/  without O_CREAT: /'
runuser -u picoflow -- /bin/echo +memory 2>&1 > $svc/cgroup.subtree_control | sed 's/^/  +memory in the service cgroup (PicoFlow still in it): /'
rmdir $probe
# The same steps as PicoFlow's enable_memory, by a shell in a delegated unit of its own
# (no PicoFlow): move into a leaf, enable memory, set a child's memory.max.
echo "== the leaf-then-memory steps by hand in a Delegate=yes unit (User=picoflow)"
cat > /run/vpi-probe.sh <<'PROBE'
d=/sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup)
echo "unit cgroup: $d"
mkdir $d/leaf && echo 0 > $d/leaf/cgroup.procs && echo "moved into $d/leaf"
/bin/echo +memory > $d/cgroup.subtree_control && echo "subtree_control: $(cat $d/cgroup.subtree_control)"
mkdir $d/task && /bin/echo 52428800 > $d/task/memory.max && echo "task memory.max: $(cat $d/task/memory.max)"
rmdir $d/task
PROBE
# (systemd-run --wait needs D-Bus, which the image lacks: a unit file does the same.)
printf '[Service]\nType=oneshot\nDelegate=yes\nUser=picoflow\nExecStart=/bin/sh /run/vpi-probe.sh\nStandardOutput=file:/run/vpi-probe.out\nStandardError=file:/run/vpi-probe.out\n' \
    > /run/systemd/system/vpi-probe.service
systemctl daemon-reload
systemctl start vpi-probe.service
sed 's/^/  /' /run/vpi-probe.out
echo "== kernel"
dmesg | grep -i -E "oom|memory cgroup|killed process" | tail -8

echo "== checks"
flat=$(printf '%s' "$json" | tr -d '\n')
task() { printf '%s' "$flat" | grep -o "{[^{}]*\"task_name\": *\"$1\"[^{}]*}" | tail -1; }
big=$(task big)
small=$(task small)
printf '%s' "$big" | grep -q '"status": *"failed"'; check "task big failed" $?
printf '%s' "$big" | grep -q 'killed: memory limit (50MB) reached'; check "task big: killed: memory limit (50MB) reached" $?
printf '%s' "$small" | grep -q '"status": *"\(success\|succeeded\|completed\)"'; check "task small succeeded" $?
journalctl -u picoflow --no-pager -o cat | grep -q 'picoflow.self'; check "journal: moved into picoflow.self" $?
grep -qw memory $svc/cgroup.subtree_control; check "picoflow.service cgroup.subtree_control has memory" $?
systemctl show -p Delegate -p User picoflow | tr '\n' ' '; echo
echo "result: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
