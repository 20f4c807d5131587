"""Run a command and sample its resident memory (the process and its children) until it ends.

    python benchmarks/peak_memory.py OUT.json -- lnrt export nnunet FOLDER PKG

Writes {"command", "wall_s", "peak_rss_mb", "peak_at_s", "samples": [[t_s, rss_mb], ...]} (one sample
every 0.25 s) and passes the command's stderr through with each line prefixed by the time, so the peak
can be placed among the command's own progress lines. /usr/bin/time's maximum resident set size is the
largest single process; this is the sum over the tree at each instant.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants, from /proc."""
    children: dict = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> None:
    out, cmd = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    samples = []

    def sample():
        while proc.poll() is None:
            samples.append([round(time.perf_counter() - t0, 2), round(tree_rss_mb(proc.pid), 1)])
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for line in proc.stderr:
        sys.stderr.write(f"[{time.perf_counter() - t0:7.1f}] {line}")
    proc.wait()
    th.join()
    peak = max(samples, key=lambda s: s[1], default=[0.0, 0.0])
    out.write_text(json.dumps({"command": cmd, "returncode": proc.returncode,
                               "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak[1],
                               "peak_at_s": peak[0], "samples": samples}))
    print(f"peak {peak[1]:.0f} MB at {peak[0]:.0f} s; wrote {out}", file=sys.stderr)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
