"""How the main job's defaults were chosen: candidate budgets compared on validation data only.

Each candidate is a `ftlib finetune` command line (a fresh process, as a user runs it);
the table shows its best validation accuracy, total run time and peak memory. The test
set is never printed here: pick on validation, then measure the pick's test accuracy
once with bench/foundation/bench_finetune.py. Asserts nothing.

    .venv/bin/python bench/foundation/tune_main_job.py                   # the candidates below
    .venv/bin/python bench/foundation/tune_main_job.py "--train-size 6000 --epochs 1" "--lr 2e-4"
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = [
    "--train-size 2000 --epochs 3",                # the defaults before issue 12
    "--train-size 6000 --epochs 1",
    "--train-size 6000 --epochs 1 --lr 2e-4",
    "--train-size 6000 --epochs 1 --lr 5e-5",
    "--train-size 4000 --epochs 2",
    "--train-size 7400 --epochs 1 --batch-size 16 --precision auto",
    "--train-size 8900 --epochs 1 --batch-size 16 --precision auto",   # the default since 2026-12-02
]


def run(extra: str, seed: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="ftlib-tune-"))
    subprocess.run([sys.executable, "-m", "ftlib.cli", "finetune", "--quiet", "--out", str(out), "--seed", str(seed),
                    *shlex.split(extra)], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                   stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="*", help="extra `ftlib finetune` arguments, one string each")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    print("| candidate | seed | best val accuracy (epoch) | total run time | peak memory |")
    print("|---|---|---|---|---|")
    for extra in args.candidates or CANDIDATES:
        for seed in args.seeds:
            m = run(extra, seed)
            best = max(m["history"], key=lambda e: e["val_accuracy"])
            print(f"| `{extra}` | {seed} | {best['val_accuracy']:.3f} ({best['epoch']}) | "
                  f"{m['total_seconds']:.0f} s | {m['peak_memory_mb']:.0f} MB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
