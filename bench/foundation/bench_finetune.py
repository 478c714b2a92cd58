"""The main job's figures: wall time, test accuracy and peak memory of `ftlib finetune`.

Runs the default text job (MiniLM on Rotten Tomatoes, 8,900 training reviews, one epoch, precision auto)
and the image job (EfficientNet-Lite0 on Fashion-MNIST, 2,000 examples, 96 px) as
separate processes, exactly as a user would, once per seed, and prints a Markdown
table: one row per run, then the mean and standard deviation over the seeds. Each row
says where the run trained (the CPU, or the GPU and the memory it allocated at most),
at which precision, and how much of the wall time was the training itself.
Run: .venv/bin/python bench/foundation/bench_finetune.py [--only text|image] [--seeds 0 1 2] [--precision fp32]
"""
import statistics
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="ftlib-bench-"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftlib.cli", "finetune", "--quiet", "--out", str(out), *args], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall": wall, **metrics}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["text", "image"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                        help="passed to ftlib finetune (default: each job's own)")
    args = parser.parse_args()
    jobs = {"text": [], "image": ["--task", "image"]}
    rows = []
    for task, extra in jobs.items():
        if args.only and task != args.only:
            continue
        runs = []
        for seed in args.seeds:
            seeded = [*extra, "--seed", str(seed)] if seed else list(extra)
            if args.precision:
                seeded += ["--precision", args.precision]
            m = run(seeded)
            runs.append(m)
            command = " ".join(["ftlib finetune", *seeded])
            device = m.get("device", "cpu")
            if "gpu_peak_memory_mb" in m:
                device += f" ({m['gpu_peak_memory_mb']:,.0f} MB allocated)"
            training = sum(e["seconds"] for e in m["history"])
            rows.append(f"| `{command}` | {m['model']} / {m['dataset']} | {device} | {m['precision']} | "
                        f"{m['train_size']} | {m['epochs']} | {m['test']['accuracy']:.4f} | {m['test']['macro_f1']:.4f} | "
                        f"{m['wall']:.1f} s | {training:.1f} s | {m['peak_memory_mb']:.0f} MB |")
            print(rows[-1], flush=True)
        if len(runs) > 1:
            acc = [m["test"]["accuracy"] for m in runs]
            rows.append(f"| mean ± std over seeds {', '.join(map(str, args.seeds))} | | | | | | "
                        f"{statistics.mean(acc):.4f} ± {statistics.stdev(acc):.4f} | | "
                        f"{statistics.mean(m['wall'] for m in runs):.1f} s | | "
                        f"{max(m['peak_memory_mb'] for m in runs):.0f} MB (max) |")
    print()
    print("| command | model / data | device | precision | train | epochs | test accuracy | macro F1 | wall time "
          "| training | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
