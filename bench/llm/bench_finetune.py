"""SmolLM2-135M-Instruct on Rotten Tomatoes (or BBC News): zero-shot vs LoRA vs full fine-tuning, over seeds.

Each run is ``ftlib finetune --model smollm2-135m`` in its own process (under TCMalloc, as
the command restarts itself), so its peak memory is its own. The test set is the MiniLM
job's (same grouped split, 2,000 reviews) unless --test-size says otherwise; BBC News keeps
the job's own (400 articles: the grouped split leaves 422 for testing).
Prints a table (mean ± std over seeds) and writes bench/results/llm/summary-<dataset>.json.

Run: .venv/bin/python bench/llm/bench_finetune.py [--seeds 0 1 2] [--techniques lora full] [--test-size 2000]
     [--dataset bbc-news]
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(technique: str, seed: int, args) -> dict:
    out = Path(args.out) / f"{args.dataset}-{technique}-seed{seed}"
    command = [str(ROOT / ".venv/bin/ftlib"), "finetune", "--model", "smollm2-135m", "--dataset", args.dataset,
               "--technique", technique,
               "--seed", str(seed), "--quiet", "--out", str(out)]
    if args.test_size:
        command += ["--test-size", str(args.test_size)]
    if args.train_size:
        command += ["--train-size", str(args.train_size)]
    if args.reuse and (out / "metrics.json").exists():
        print(f"reusing {out / 'metrics.json'}", flush=True)
        return json.loads((out / "metrics.json").read_text())
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads((out / "metrics.json").read_text())


def _mean_std(values) -> str:
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f} ({min(values):.4f}-{max(values):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--techniques", nargs="+", default=["lora"], choices=["lora", "full"])
    parser.add_argument("--dataset", default="rotten-tomatoes", choices=["rotten-tomatoes", "bbc-news"])
    parser.add_argument("--test-size", type=int,
                        help="default: 2000 on Rotten Tomatoes (the MiniLM job's test set), the job's own elsewhere")
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--out", default=str(ROOT / "bench/results/llm"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs already in --out (same options) instead of running them again")
    args = parser.parse_args()
    if args.test_size is None and args.dataset == "rotten-tomatoes":
        args.test_size = 2000
    runs = {t: [run(t, s, args) for s in args.seeds] for t in args.techniques}
    summary = {}
    for technique, results in runs.items():
        summary[technique] = {
            "seeds": args.seeds,
            "zero_shot_accuracy": [r["zero_shot"]["accuracy"] for r in results],
            "test_accuracy": [r["test"]["accuracy"] for r in results],
            "train_seconds": [r["train_seconds"] for r in results],
            "train_tokens_per_second": [r["train_tokens_per_second"] for r in results],
            "peak_memory_mb": [r["peak_memory_mb"] for r in results],
            "trainable_parameters": results[0]["trainable_parameters"],
            "total_parameters": results[0]["total_parameters"],
            "precision": results[0]["precision"],
        }
        s = summary[technique]
        print(f"{technique}: zero-shot {_mean_std(s['zero_shot_accuracy'])}; fine-tuned {_mean_std(s['test_accuracy'])}; "
              f"training {_mean_std(s['train_seconds'])} s; peak {max(s['peak_memory_mb']):,.0f} MB; "
              f"{s['trainable_parameters']:,} of {s['total_parameters']:,} parameters trained "
              f"({100 * s['trainable_parameters'] / s['total_parameters']:.2f}%); precision {s['precision']}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"summary-{args.dataset}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
