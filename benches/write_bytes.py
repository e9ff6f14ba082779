#!/usr/bin/env python3
"""Bytes PicoFlow writes to disk per task (SD-card wear): runs a chain of N quiet shell
tasks and reads the child's block output count (getrusage, 512-byte blocks).

usage: benches/write_bytes.py PICOFLOW_BINARY [N] [COMMAND]
(COMMAND defaults to `true`; `sleep 1` shows tasks longer than the group-commit window)
"""
import os
import resource
import subprocess
import sys
import tempfile

binary = os.path.abspath(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
command = sys.argv[3] if len(sys.argv) > 3 else "true"

with tempfile.TemporaryDirectory(prefix="picoflow-wb-", dir=os.environ.get("BENCH_DIR")) as d:
    lines = ["name: chain", "config:", "  max_parallel: 1", "tasks:"]
    for i in range(n):
        lines.append(f"  - name: t{i}")
        lines.append("    type: shell")
        if i:
            lines.append(f"    depends_on: [t{i - 1}]")
        lines.append("    config:")
        lines.append(f'      command: "{command}"')
    wf = os.path.join(d, "chain.yaml")
    with open(wf, "w") as f:
        f.write("\n".join(lines) + "\n")
    results = []
    for run in range(2):  # the first run also creates the state file
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
        subprocess.run([binary, "run", wf], cwd=d, check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
        results.append((after - before) * 512)
    size = os.path.getsize(os.path.join(d, "picoflow.redb"))
    for i, b in enumerate(results):
        label = "first run (creates the file)" if i == 0 else "second run"
        print(f"{label}: {b} bytes written, {b / n / 1024:.1f} KiB per task")
    print(f"state file after {2 * n} tasks: {size} bytes")
