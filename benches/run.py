#!/usr/bin/env python3
"""PicoFlow's benchmark suite: the targets of the performance work, measured side by side
with GNU make (which runs the same DAG with nothing but fork/exec) on the same machine.

usage: benches/run.py [--runs N] [--out benches/RESULTS.md]

Builds the release binaries itself (core = --no-default-features, and all features), generates
the workflows and the equivalent Makefiles in a temporary directory, alternates picoflow and
make runs, and prints a Markdown table of medians and ratios (also written to --out, whose
sections after the table, such as the Fleet section of benches/fleet.sh, are kept).
Needs: cargo, make, hyperfine (validate timings), GNU time (peak RSS), python3.
"""
import argparse
import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def build(features, dest):
    cmd = ["cargo", "build", "-q", "--release", "-p", "picoflow-cli"] + features
    subprocess.run(cmd, cwd=ROOT, check=True)
    shutil.copy(os.path.join(TARGET, "release", "picoflow"), dest)
    return dest


def workflow(name, tasks, max_parallel):
    """tasks: list of (name, [deps]). Every task runs /bin/true."""
    out = [f"name: {name}", "config:", f"  max_parallel: {max_parallel}", "  retry_default: 0", "tasks:"]
    for t, deps in tasks:
        out.append(f"  - name: {t}")
        out.append("    type: shell")
        if deps:
            out.append(f"    depends_on: [{', '.join(deps)}]")
        out.append("    config:")
        out.append("      command: /bin/true")
    return "\n".join(out) + "\n"


def makefile(tasks):
    out = [".PHONY: all " + " ".join(t for t, _ in tasks), "all: " + " ".join(t for t, _ in tasks)]
    for t, deps in tasks:
        out.append(f"{t}: {' '.join(deps)}")
        out.append("\t@/bin/true")
    return "\n".join(out) + "\n"


def chain(n):
    return [(f"t{i}", [f"t{i-1}"] if i else []) for i in range(n)]


def independent(n):
    return [(f"t{i}", []) for i in range(n)]


def layered(layers, width):
    tasks = []
    for k in range(layers):
        for i in range(width):
            deps = [] if k == 0 else [f"l{k-1}_{i}", f"l{k-1}_{(i + 1) % width}"]
            tasks.append((f"l{k}_{i}", deps))
    return tasks


def timed(cmd, cwd):
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def peak_rss_kib(cmd, cwd):
    """Peak RSS of `cmd` alone, by GNU time. (wait4's ru_maxrss is no good from Python: the
    child is a vfork of this interpreter until it execs, and the kernel counts that.)"""
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, cwd=cwd, check=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
    return int(out.strip().splitlines()[-1])


def versus_make(binary, work, label, tasks, parallel, runs):
    d = os.path.join(work, label)
    os.makedirs(d)
    with open(os.path.join(d, "w.yaml"), "w") as f:
        f.write(workflow(label, tasks, parallel))
    with open(os.path.join(d, "Makefile"), "w") as f:
        f.write(makefile(tasks))
    pf = [binary, "--log-level", "error", "run", "w.yaml"]
    mk = ["make", "-s", f"-j{parallel}", "all"]
    timed(pf, d)  # warm up: creates the state file
    timed(mk, d)
    a, b = [], []
    for _ in range(runs):  # alternate, so drift on a shared machine hits both alike
        a.append(timed(pf, d))
        b.append(timed(mk, d))
    return statistics.median(a), statistics.median(b)


def journal_sync_ms(work, n=200):
    """Median time of appending one journal-sized line (about 300 bytes) to a file and
    syncing it (fdatasync), on the file system of the state files: the least any durable
    orchestrator pays per task whose completion must be on disk before its dependent starts."""
    path = os.path.join(work, "sync-probe")
    line = b"x" * 300 + b"\n"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, line)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1000


def hyperfine_ms(cmd, cwd, runs):
    out = os.path.join(cwd, "hf.json")
    subprocess.run(
        ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--export-json", out, cmd],
        cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import json
    with open(out) as f:
        return json.load(f)["results"][0]["median"] * 1000


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_figures(binary, work, label, web=False):
    """RSS, PSS (shared pages divided among the processes that map them), private (anonymous)
    memory, threads and context switches in 5 s of an idle daemon, in KiB. With `web`, the web
    UI is on and each of its pages and API lists has been served once before."""
    d = os.path.join(work, "daemon-" + label)
    os.makedirs(d)
    with open(os.path.join(d, "y.yaml"), "w") as f:
        f.write("name: yearly\nschedule: \"0 0 0 1 1 *\"\ntasks:\n  - name: t\n    type: shell\n    config:\n      command: /bin/true\n")
    port = free_port() if web else 0
    with open(os.path.join(d, "picoflow.toml"), "w") as f:
        f.write(f"[metrics]\nport = {port}\n[web]\nenabled = {'true' if web else 'false'}\nport = {port}\n")
    p = subprocess.Popen([binary, "daemon", "start", "y.yaml"], cwd=d,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        if web:
            import urllib.request
            for path in ("/", "/workflows/yearly", "/api/v1/workflows", "/api/v1/executions",
                         "/static/picoflow.js", "/metrics"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()
            time.sleep(1)

        def switches():
            total = 0
            for t in os.listdir(f"/proc/{p.pid}/task"):
                with open(f"/proc/{p.pid}/task/{t}/status") as f:
                    for line in f:
                        if "ctxt_switches" in line:
                            total += int(line.split()[1])
            return total

        s0 = switches()
        time.sleep(5)
        wakeups = switches() - s0
        with open(f"/proc/{p.pid}/status") as f:
            status = dict(l.split(":", 1) for l in f if ":" in l)
        rss, anon = (int(status[k].split()[0]) for k in ("VmRSS", "RssAnon"))
        with open(f"/proc/{p.pid}/smaps_rollup") as f:
            pss = next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
        threads = len(os.listdir(f"/proc/{p.pid}/task"))
    finally:
        p.terminate()
        p.wait()
    return rss, pss, anon, threads, wakeups


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "RESULTS.md"))
    args = ap.parse_args()
    if not shutil.which("make") or not shutil.which("hyperfine") or not os.path.exists("/usr/bin/time"):
        sys.exit("needs make, hyperfine and GNU time (scripts/install-test-deps.sh installs them)")

    work = tempfile.mkdtemp(prefix="picoflow-bench-")
    core = build(["--no-default-features"], os.path.join(work, "picoflow-core"))
    full = build([], os.path.join(work, "picoflow-full"))
    rows = []

    def row(measure, target, value, ok):
        rows.append((measure, target, value, "met" if ok else "NOT met"))
        print(f"{measure}: {value} (target {target})", flush=True)

    sync_ms = journal_sync_ms(work)
    for label, tasks, par, target in [
        ("chain of 100 `/bin/true`, max_parallel 1, vs `make -j1`", chain(100), 1, 1.15),
        ("1000 independent tasks, max_parallel 16, vs `make -j16`", independent(1000), 16, 1.10),
        ("1000 tasks in 10 layers, max_parallel 4, vs `make -j4`", layered(10, 100), 4, 1.15),
    ]:
        name = "bench" + str(len(rows))
        pf, mk = versus_make(core, work, name, tasks, par, args.runs)
        ratio = pf / mk
        row(label, f"≤ {target:.2f}×", f"{pf*1000:.0f} ms vs {mk*1000:.0f} ms = {ratio:.2f}×", ratio <= target)
        if par == 1:
            # In a chain every completion must be durable before the next task starts.
            floor = mk * 1000 + len(tasks) * sync_ms
            row("the same chain vs the floor: make + one journal sync per task "
                f"({sync_ms:.2f} ms each, measured in the same run)", "≤ 1.10×",
                f"{pf*1000:.0f} ms vs {floor:.0f} ms = {pf*1000/floor:.2f}×", pf * 1000 / floor <= 1.10)

    vals = {}
    for n in (100, 1000, 5000):
        d = os.path.join(work, f"validate{n}")
        os.makedirs(d)
        with open(os.path.join(d, "w.yaml"), "w") as f:
            f.write(workflow(f"v{n}", layered(n // 100, 100) if n >= 100 else chain(n), 4))
        vals[n] = hyperfine_ms(f"{core} validate w.yaml", d, 30)
    row("`validate` of 100 / 1000 / 5000 tasks", "≤ 2 / 4 / 15 ms",
        f"{vals[100]:.1f} / {vals[1000]:.1f} / {vals[5000]:.1f} ms",
        vals[100] <= 2 and vals[1000] <= 4 and vals[5000] <= 15)
    row("`validate` 5000 vs 1000 tasks (linear)", "≤ 6×", f"{vals[5000] / vals[1000]:.1f}×",
        vals[5000] / vals[1000] <= 6)
    rss = peak_rss_kib([core, "validate", "w.yaml"], os.path.join(work, "validate5000"))
    row("peak RSS of `validate` on 5000 tasks", "≤ 15 MiB", f"{rss/1024:.1f} MiB", rss <= 15 * 1024)

    r_core, p_core, a_core, th_core, w_core = daemon_figures(core, work, "core")
    r_full, p_full, a_full, th_full, w_full = daemon_figures(full, work, "full")
    row("idle daemon RSS, core / all features", "≤ 3 / 4 MiB",
        f"{r_core/1024:.1f} / {r_full/1024:.1f} MiB; PSS {p_core/1024:.1f} / {p_full/1024:.1f} MiB; "
        f"private (anonymous) {a_core/1024:.1f} / {a_full/1024:.1f} MiB ({th_core} / {th_full} threads)",
        r_core <= 3 * 1024 and r_full <= 4 * 1024)
    row("idle daemon wake-ups in 5 s, core / all features", "0", f"{w_core} / {w_full}",
        w_core == 0 and w_full == 0)
    r_web, p_web, a_web, th_web, w_web = daemon_figures(full, work, "web", web=True)
    row("idle daemon RSS, all features, web UI on and its pages served once", "≤ 4 MiB",
        f"{r_web/1024:.1f} MiB; PSS {p_web/1024:.1f} MiB; private {a_web/1024:.1f} MiB "
        f"({th_web} threads), "
        f"{w_web} wake-ups in 5 s", r_web <= 4 * 1024 and w_web == 0)

    d = os.path.join(work, "sleep10")
    os.makedirs(d)
    tasks = "\n".join(
        f"  - name: s{i}\n    type: shell\n    config:\n      command: /bin/sleep\n      args: [\"1\"]" for i in range(10))
    with open(os.path.join(d, "w.yaml"), "w") as f:
        f.write(f"name: sleepers\nconfig:\n  max_parallel: 10\ntasks:\n{tasks}\n")
    peak_rss_kib([core, "run", "w.yaml"], d)
    rss = peak_rss_kib([core, "run", "w.yaml"], d)
    row("orchestrator RSS with 10 parallel `sleep 1`", "≤ 4 MiB", f"{rss/1024:.1f} MiB", rss <= 4 * 1024)

    out = subprocess.run([sys.executable, os.path.join(ROOT, "benches", "write_bytes.py"), core, "100"],
                         check=True, capture_output=True, text=True).stdout
    second = [l for l in out.splitlines() if l.startswith("second run")][0]
    kib = float(second.split(",")[1].split()[0])
    row("bytes written per task (chain of 100 quiet tasks, durable per task)", "≤ 8 KiB",
        f"{kib:.1f} KiB", kib <= 8)

    sizes = [("stripped binary, `--no-default-features`", core, 1.8),
             ("stripped binary, all features, system OpenSSL", full, 3.5)]
    if os.path.isdir("/usr/lib/rustlib/src/rust/library"):
        smallest = os.path.join(work, "picoflow-smallest")
        subprocess.run([os.path.join(ROOT, "size-budget", "smallest.sh"),
                        "x86_64-unknown-linux-gnu", smallest], cwd=ROOT, check=True)
        sizes.insert(1, ("stripped binary, smallest build (`size-budget/smallest.sh`)", smallest, 1.0))
    for label, path, target in sizes:
        size = os.path.getsize(path)
        row(label, f"≤ {target} MiB", f"{size/1048576:.2f} MiB ({size} bytes)", size <= target * 1048576)

    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    lines = [
        "# PicoFlow benchmark results",
        "",
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()} Linux "
        f"{platform.release()}, {cpu}, {os.cpu_count()} cores, by `benches/run.py --runs {args.runs}` "
        "(release builds; core = `--no-default-features`). Times are medians of alternating runs.",
        "",
        "| measure | target | result | |",
        "| --- | --- | --- | --- |",
    ] + [f"| {m} | {t} | {v} | {ok} |" for m, t, v, ok in rows]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    # Sections other scripts measure (`## Fleet`: benches/fleet.sh) stay.
    try:
        with open(args.out) as f:
            old = f.read()
        kept = old.find("\n## ")
        if kept >= 0:
            text += old[kept:]
    except FileNotFoundError:
        pass
    with open(args.out, "w") as f:
        f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
