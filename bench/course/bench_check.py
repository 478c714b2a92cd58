"""`ftlib check` per course notebook: the wall time a learner waits after each attempt.

Runs ``ftlib check`` as a command line (a fresh process, as a learner runs it) on each
solution notebook, ``--repeat`` times cold (``FTLIB_CHECK_WARM=0``: every check imports
torch and transformers itself) and ``--repeat`` times served by a warm process (what a
learner's second and later checks get; see `ftgrade.warm`), and prints the
median wall times and the CPU model. Asserts nothing.

    .venv/bin/python bench/course/bench_check.py                  # every assignment, 3 runs each
    .venv/bin/python bench/course/bench_check.py 04_modify_model --repeat 5
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from course_notebooks import assignments, solution_notebook  # noqa: E402
from ftgrade import warm  # noqa: E402


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
    runtime = tempfile.mkdtemp(prefix="fb", dir="/tmp")  # a warm server of this run's own
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "XDG_RUNTIME_DIR": runtime}
    env.pop("CI", None)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; median of {args.repeat} runs")
    print("| notebook | cold `ftlib check` (median) | min | max | warm (median) | min | max | exit |")
    print("|---|---|---|---|---|---|---|---|")
    worst = {"cold": 0.0, "warm": 0.0}

    def timed(name, how):
        times, code = [], None
        for _ in range(args.repeat):
            start = time.perf_counter()
            code = subprocess.run([*ftlib, str(solution_notebook(name))], cwd=ROOT,
                                  env={**env, "FTLIB_CHECK_WARM": "0" if how == "cold" else "1"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
            times.append(time.perf_counter() - start)
        worst[how] = max(worst[how], statistics.median(times))
        return f"{statistics.median(times):.1f} s | {min(times):.1f} s | {max(times):.1f} s", code

    names = args.names or assignments()
    try:
        # Start the server and let it finish importing, as a learner's first check does.
        subprocess.run([*ftlib, str(solution_notebook(names[0]))], cwd=ROOT, env={**env, "FTLIB_CHECK_WARM": "1"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        timed(names[0], "warm")
        worst["warm"] = 0.0
        for name in names:
            cold, code = timed(name, "cold")
            served, code = timed(name, "warm")
            print(f"| {name} | {cold} | {served} | {code} |", flush=True)
    finally:
        folder = os.path.join(runtime, f"ftlib-check-{os.getuid()}")
        for sock in os.listdir(folder) if os.path.isdir(folder) else []:
            warm.stop(os.path.join(folder, sock))
        shutil.rmtree(runtime, ignore_errors=True)
    print(f"\nslowest notebook: {worst['cold']:.1f} s cold, {worst['warm']:.1f} s warm (target: under 5 s each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
