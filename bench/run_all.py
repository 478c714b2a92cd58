"""Run every benchmark whose figures bench/RESULTS.md records, one after another.

Prints the plan and an estimate of the total time first, then, for each benchmark, the
command that reproduces it and the figures it prints; a summary at the end says how
long each took and whether it succeeded. Benchmarks compete for the CPU, so they never
run in parallel, and nothing else should run meanwhile (a busy machine skews times).

    .venv/bin/python bench/run_all.py --list            # the plan and the estimate only
    .venv/bin/python bench/run_all.py                   # everything (about 2 hours on 2 cores)
    .venv/bin/python bench/run_all.py --quick           # only those under 10 minutes
    .venv/bin/python bench/run_all.py main-job check    # by name

Exit status 1 if a benchmark failed.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = "{python}"  # replaced by this interpreter, so the venv's ftlib and packages are used
SKIPPED = 77  # a benchmark's exit status when this environment cannot run it (automake's convention)


@dataclass(frozen=True)
class Bench:
    name: str
    command: tuple[str, ...]
    minutes: float  # on an idle 2-core CPU, measured
    figures: str  # what bench/RESULTS.md records from it


BENCHES = [
    Bench("headline", (PY, "bench/headline.py"), 40,
          "README's table and the head of RESULTS.md: the jobs at their defaults (headlines over 3 seeds), kept in "
          "bench/records/ (then scripts/write_results.py)"),
    Bench("decoding", (PY, "bench/decoding.py"), 6,
          "SmolLM2 decoding: new tokens/s per path (adapter, plain, ftlib's merged stream) against the bandwidth floor "
          "(then scripts/write_results.py)"),
    Bench("llm-generate", (PY, "bench/llm/bench_generate.py"), 2,
          "SmolLM2 greedy generation of BBC headlines: time and peak memory per batch size"),
    Bench("main-job", (PY, "bench/foundation/bench_finetune.py"), 7,
          "main job and image job: test accuracy, wall time, peak memory"),
    Bench("preference", (PY, "bench/preference.py"), 75,
          "bench/RESULTS.md's preference section and README's DPO row: the starting model, SFT, SFT then DPO, SFT then "
          "SimPO on BBC headline pairs over 3 seeds: ROUGE-L, held-out likelihood accuracy, training time, peak memory"),
    Bench("dpo-vs-trl", (PY, "bench/llm/dpo_vs_trl.py"), 2,
          "NEEDS TRL (trl==1.16.0; the course environment has none, so there it prints SKIPPED and exits 77): ftlib's "
          "DPO loss, rewards and log-probabilities against TRL's DPOTrainer on the same batches (tiny Llama, SmolLM2 "
          "on 3 headline pairs), kept in bench/records/dpo-vs-trl-*.json; fails on a difference over tolerance"),
    Bench("llm-step", (PY, "bench/llm/bench_step.py", "--steps", "5", "--rounds", "2"), 5,
          "SmolLM2 SFT step: tokens/s vs a naive transformers + peft loop; matmul GFLOP/s"),
    Bench("loop", (PY, "bench/foundation/bench_loop.py", "--steps", "15", "--rounds", "3"), 4,
          "training-loop overhead: fit vs a bare loop vs the Trainer"),
    Bench("loop-auto", (PY, "bench/foundation/bench_loop.py", "--steps", "15", "--rounds", "3", "--precision", "auto"),
          4, "training-loop overhead at precision auto (bf16 where the CPU has it)"),
    Bench("precision", (PY, "bench/foundation/bench_precision.py", "--steps", "6", "--rounds", "3"), 4,
          "MiniLM training step per precision, with matmul GFLOP/s at fp32 and bf16"),
    Bench("distributed", (PY, "bench/foundation/bench_distributed.py", "--rounds", "2"), 4,
          "accelerate launch, 2 CPU processes vs 1 on the same work; the equality checks"),
    Bench("predict", (PY, "bench/foundation/bench_predict.py"), 2,
          "`ftlib predict`: start-up of one call, texts per second on 1,000 texts"),
    Bench("check", (PY, "bench/course/bench_check.py"), 3,
          "`ftlib check` wall time per course notebook"),
    Bench("grading", (PY, "bench/grading/bench_grade.py", "-n", "20", "--workers", "2"), 2,
          "ftlib grade vs serial nbgrader autograde (toy assignment)"),
    Bench("grading-real", (PY, "bench/grading/bench_grade.py", "--assignment", "01_choose_model", "-n", "20",
                           "--workers", "2"), 7, "ftlib grade vs nbgrader on 01_choose_model"),
    Bench("grading-06", (PY, "bench/grading/bench_grade.py", "--assignment", "06_train_and_monitor", "-n", "20",
                         "--workers", "2", "--dask", "--overhead", "3", "--cell-timeout", "300"), 25,
          "serial nbgrader vs ftlib grade vs a local Dask cluster on 06_train_and_monitor; overhead"),
    Bench("notebooks", (PY, "scripts/measure_notebooks.py", "--threads", "1"), 13,
          "course notebooks: wall time and peak memory"),
    Bench("notebooks-grading", (PY, "scripts/measure_notebooks.py", "--threads", "1", "--grading"), 6,
          "course notebooks under NBGRADER_EXECUTION"),
    Bench("techniques-fmnist", ("sh", "bench/techniques/fashion_mnist.sh"), 5,
          "Fashion-MNIST: scratch vs pretrained vs features, forgetting"),
    Bench("techniques-fmnist-sizes", ("sh", "bench/techniques/fashion_mnist_sizes.sh"), 12,
          "Fashion-MNIST data efficiency at 100 / 500 / 2,000 examples"),
    Bench("llm-finetune", (PY, "bench/llm/bench_finetune.py", "--seeds", "0", "1", "2", "--techniques", "lora",
                           "full", "--test-size", "2000"), 55,
          "SmolLM2 zero-shot vs LoRA vs full fine-tuning over 3 seeds (RESULTS.md: LoRA 3 seeds, full seed 0)"),
    Bench("techniques-rt", ("sh", "bench/techniques/rotten_tomatoes.sh"), 60,
          "every technique on Rotten Tomatoes, seeds 0-2"),
]


def _argv(bench: Bench) -> list[str]:
    return [sys.executable if part == PY else part for part in bench.command]


def _shown(bench: Bench) -> str:
    return shlex.join([".venv/bin/python" if part == PY else part for part in bench.command])


def _env() -> dict:
    # The shell scripts call `ftlib` and `python`: this interpreter's folder comes first.
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(b.name for b in BENCHES)}")
    parser.add_argument("--list", action="store_true", help="print the plan and the time estimate, run nothing")
    parser.add_argument("--quick", action="store_true", help="only the benchmarks under 10 minutes")
    args = parser.parse_args(argv)
    known = {b.name: b for b in BENCHES}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    plan = [known[n] for n in args.names] if args.names else list(BENCHES)
    if args.quick:
        plan = [b for b in plan if b.minutes < 10]
    total = sum(b.minutes for b in plan)
    print(f"{len(plan)} benchmarks, about {total:.0f} min on an idle 2-core CPU:")
    for b in plan:
        print(f"  {b.name:24s} ~{b.minutes:>3.0f} min  {b.figures}\n  {'':24s}        $ {_shown(b)}")
    if args.list:
        return 0
    done = []
    for b in plan:
        print(f"\n=== {b.name}: {b.figures}\n$ {_shown(b)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(_argv(b), cwd=ROOT, env=_env()).returncode
        done.append((b, time.perf_counter() - start, code))
    print("\n| benchmark | command | wall time | result |\n|---|---|---|---|")
    for b, seconds, code in done:
        print(f"| {b.name} | `{_shown(b)}` | {seconds / 60:.1f} min | {result(code)} |")
    return 1 if any(code not in (0, SKIPPED) for _, _, code in done) else 0


def result(code: int) -> str:
    """A benchmark's exit status as the summary table says it: a skipped one is not "ok"."""
    return {0: "ok", SKIPPED: "skipped (see its output)"}.get(code, f"FAILED ({code})")


if __name__ == "__main__":
    sys.exit(main())
