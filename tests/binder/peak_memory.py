"""Run a command and report the peak memory of it and everything it starts.

    python tests/binder/peak_memory.py [--json OUT] -- jupyter nbconvert --execute ...

Samples the resident set size (RSS) of the process tree every 0.2 s (psutil) and prints
one JSON line: the peak of the tree's total (what a container's memory limit sees, give
or take shared pages), the peak of the largest single process (the kernel, for a
notebook), the wall time and the exit status.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil


def run(cmd, *, interval=0.2, **popen_kwargs) -> dict:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, **popen_kwargs)
    root = psutil.Process(proc.pid)
    peak_total = peak_single = 0
    peak_name = ""
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            if rss > peak_single:
                peak_single, peak_name = rss, " ".join(p.cmdline()[:3])
        peak_total = max(peak_total, total)
        time.sleep(interval)
    proc.wait()
    mb = 1024 * 1024
    return {"returncode": proc.returncode, "wall_s": round(time.monotonic() - start, 1),
            "peak_tree_rss_mb": round(peak_total / mb), "peak_process_rss_mb": round(peak_single / mb),
            "peak_process": peak_name}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command")
    result = run(cmd)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
