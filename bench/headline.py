"""The headline figures: the three jobs a newcomer runs, measured and kept as a record.

Runs, one after another and exactly as a user would (``ftlib finetune`` in a process of
its own, default settings, seed 0, each test set touched once):

- ``main``: MiniLM-L6 on Rotten Tomatoes (``ftlib finetune``, what ``make demo`` runs);
- ``image``: EfficientNet-Lite0 on Fashion-MNIST (``ftlib finetune --task image``);
- ``generative``: SmolLM2-135M-Instruct with LoRA on Rotten Tomatoes, scored on the main
  job's 2,000 test reviews (``ftlib finetune --model smollm2-135m --test-size 2000``).

and writes ``bench/records/headline-<date>-<cpu>.json``: each job's command, test accuracy
(and the generative model's zero-shot accuracy before fine-tuning), training and
whole-run seconds, peak memory and precision, and the machine (its CPU as the kernel
names it, the instruction sets that decide the precision, the cores torch uses). The
README's results table and the head of bench/RESULTS.md are written from these records by
``scripts/write_results.py``; nothing there is typed by hand.

    .venv/bin/python bench/headline.py                 # about 15 minutes on 2 cores
    .venv/bin/python bench/headline.py --jobs main     # one job; the record says which ran

Nothing else should run meanwhile: the times are the machine's, not a share of it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bench" / "records"

JOBS = {
    "main": [],
    "image": ["--task", "image"],
    "generative": ["--model", "smollm2-135m", "--test-size", "2000"],
}
# The instruction sets that decide what a CPU run can do (bf16 matrix units or not).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine() -> dict:
    """The CPU as /proc/cpuinfo names it, the flags in `FLAGS` it has, and the cores torch uses."""
    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        field.setdefault(key.strip(), value.strip())
    flags = set(field.get("flags", "").split())
    return {
        "cpu": field.get("model name") or platform.processor() or platform.machine(),
        "vendor": field.get("vendor_id", ""),
        "family": field.get("cpu family", ""),
        "model": field.get("model", ""),
        "flags": [f for f in FLAGS if f in flags],
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_job(args: list[str]) -> dict:
    """One ``ftlib finetune`` run in its own process; the figures of its metrics.json."""
    out = Path(tempfile.mkdtemp(prefix="ftlib-headline-"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftlib.cli", "finetune", "--quiet", "--out", str(out), *args],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    m = json.loads((out / "metrics.json").read_text())
    job = {
        "command": " ".join(["ftlib finetune", *args]),
        "model": m["model"], "dataset": m["dataset"], "technique": m["technique"],
        "train_size": m["train_size"], "test_size": m["test_size"], "epochs": m["epochs"], "seed": m["seed"],
        "precision": m.get("precision"), "device": m.get("device", "cpu"),
        "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"],
        "training_seconds": sum(e["seconds"] for e in m["history"]),
        "wall_seconds": wall, "peak_memory_mb": m["peak_memory_mb"],
    }
    if "zero_shot" in m:
        job["zero_shot_accuracy"] = m["zero_shot"]["accuracy"]
    return job


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--out", type=Path, default=RECORDS, help="folder of the records (default: bench/records)")
    args = parser.parse_args(argv)
    record = {
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "machine": machine(),
        "jobs": {},
    }
    for name in args.jobs:
        print(f"{name}: ftlib finetune {' '.join(JOBS[name])}", flush=True)
        record["jobs"][name] = job = run_job(JOBS[name])
        print(f"  test accuracy {job['test_accuracy']:.4f}, {job['wall_seconds']:.0f} s, "
              f"{job['peak_memory_mb']:,.0f} MB", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"headline-{record['date']}-{_slug(record['machine']['cpu'])}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}; "
          "now run scripts/write_results.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
