"""`ftlib check` per course notebook: the wall time a learner waits after each attempt.

Runs ``ftlib check`` as a command line (a fresh process, as a learner runs it) on each
solution notebook, ``--repeat`` times, and prints the median wall time, the CPU model
and, per notebook, how long its grade cells themselves took. Asserts nothing.

    .venv/bin/python bench/course/bench_check.py                  # every assignment, 3 runs each
    .venv/bin/python bench/course/bench_check.py 04_modify_model --repeat 5
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ftlib.checks.notebooks import assignments, solution_notebook  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="assignments (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per notebook (default 3)")
    args = parser.parse_args(argv)
    ftlib = [sys.executable, "-m", "ftlib.cli", "check"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; median of {args.repeat} runs")
    print("| notebook | `ftlib check` wall time (median) | min | max | exit |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name in args.names or assignments():
        times, code = [], None
        for _ in range(args.repeat):
            start = time.perf_counter()
            code = subprocess.run([*ftlib, str(solution_notebook(name))], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        worst = max(worst, median)
        print(f"| {name} | {median:.1f} s | {min(times):.1f} s | {max(times):.1f} s | {code} |", flush=True)
    print(f"\nslowest notebook: {worst:.1f} s (target: under 5 s each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
