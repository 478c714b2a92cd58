"""The headline figures: the jobs a newcomer runs, measured and kept as a record.

Runs, one after another and exactly as a user would (``ftlib finetune`` in a process of
its own, default settings, seed 0, each test set touched once):

- ``main``: MiniLM-L6 on Rotten Tomatoes (``ftlib finetune``, what ``make demo`` runs);
- ``image``: EfficientNet-Lite0 on Fashion-MNIST (``ftlib finetune --task image``);
- ``generative``: SmolLM2-135M-Instruct with LoRA on Rotten Tomatoes, scored on the main
  job's 2,000 test reviews (``ftlib finetune --model smollm2-135m --test-size 2000``);
- ``headlines``: SmolLM2-135M-Instruct with LoRA writing BBC News headlines, scored by
  ROUGE against the real ones (``ftlib finetune --model smollm2-135m --dataset
  bbc-headlines``), over seeds 0, 1 and 2 (`SEEDS`): mean and standard deviation, and
  each seed's figures with its 95% bootstrap intervals.

and writes ``bench/records/headline-<date>-<cpu>.json`` (``...-<jobs>.json`` when only some
jobs ran): each job's command, test accuracy (and the generative model's zero-shot accuracy
before fine-tuning) or ROUGE, training and whole-run seconds, peak memory and precision,
the commit, and the machine (its CPU as the kernel names it, the instruction sets that
decide the precision, the cores torch uses). The README's results table and the head of
bench/RESULTS.md are written from these records by ``scripts/write_results.py``; nothing
there is typed by hand.

    .venv/bin/python bench/headline.py                     # about 35 minutes on 2 cores
    .venv/bin/python bench/headline.py --jobs headlines    # some jobs; the record says which ran

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
    "headlines": ["--model", "smollm2-135m", "--dataset", "bbc-headlines"],
}
# Jobs run over several seeds (the others: seed 0).
SEEDS = {"headlines": (0, 1, 2)}
# What a job whose answers are text records of each of its runs.
TEXT_SCORES = ("rouge1", "rouge2", "rougeL", "predicted_words", "reference_words")
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
        "training_seconds": sum(e["seconds"] for e in m["history"]),
        "wall_seconds": wall, "peak_memory_mb": m["peak_memory_mb"],
    }
    if "rougeL" in m["test"]:  # text answers
        job.update({f"test_{k}": m["test"][k] for k in TEXT_SCORES})
        job.update({f"zero_shot_{k}": m["zero_shot"][k] for k in TEXT_SCORES})
        job.update(test_rougeL_95ci=m["test"]["rougeL_95ci"], rougeL_gain_95ci=m["test"]["rougeL_gain_95ci"],
                   zero_shot_rougeL_95ci=m["zero_shot"]["rougeL_95ci"])
        return job
    job.update(test_accuracy=m["test"]["accuracy"], test_macro_f1=m["test"]["macro_f1"])
    if "zero_shot" in m:
        job["zero_shot_accuracy"] = m["zero_shot"]["accuracy"]
    return job


def run_seeds(args: list[str], seeds) -> dict:
    """The job once per seed: each run's figures under ``"runs"``, their mean and standard deviation beside."""
    import statistics

    runs = [run_job([*args, "--seed", str(seed)]) for seed in seeds]
    job = {k: v for k, v in runs[0].items() if not isinstance(v, (int, float)) or k in ("train_size", "test_size",
                                                                                       "epochs")}
    job["command"] = " ".join(["ftlib finetune", *args])
    job["seeds"] = list(seeds)
    for key, value in runs[0].items():
        if isinstance(value, float):
            values = [r[key] for r in runs]
            job[key] = statistics.fmean(values)
            job[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    job["runs"] = runs
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
        job = run_seeds(JOBS[name], SEEDS[name]) if name in SEEDS else run_job(JOBS[name])
        record["jobs"][name] = job
        score = f"test ROUGE-L {job['test_rougeL']:.4f}" if "test_rougeL" in job else \
            f"test accuracy {job['test_accuracy']:.4f}"
        print(f"  {score}, {job['wall_seconds']:.0f} s, {job['peak_memory_mb']:,.0f} MB", flush=True)
    some = "" if set(args.jobs) == set(JOBS) else "-" + "-".join(args.jobs)
    write_record(record, args.out, "headline", some)
    print("now run scripts/write_results.py")
    return 0


def write_record(record: dict, folder: Path, kind: str, suffix: str = "") -> Path:
    """``record`` as ``<folder>/<kind>-<date>-<cpu><suffix>.json``, the name scripts/write_results.py reads."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{record['date']}-{_slug(record['machine']['cpu'])}{suffix}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


if __name__ == "__main__":
    sys.exit(main())
