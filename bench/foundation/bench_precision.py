"""Training step time at each precision, next to the CPU's matrix-product throughput.

Same process, same batches, rounds in rotating order (a busy machine affects every
variant alike), median of each:

* matmul GFLOP/s of a square product (``--size``, default 1024) in fp32 and bf16;
* one MiniLM-L6 training step (``ftlib.train.train_one_epoch`` over the same length-grouped
  Rotten Tomatoes batches of 32 as ``ftlib finetune``), per precision;
* what ``precision="auto"`` resolves to here, and the flags it decided from.

Run: .venv/bin/python bench/foundation/bench_precision.py [--steps 6 --rounds 3 --precisions fp32 bf16]
"""
import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ftlib.data import load_dataset, make_loader, split_dataset
from ftlib.devices import cpu_has_native_bf16, resolve_precision
from ftlib.models import load_model
from ftlib.optim import adamw
from ftlib.train import train_one_epoch


def matmul_gflops(dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up (oneDNN builds its kernel)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def step_seconds(template: dict, batches: list, precision: str) -> float:
    model = load_model("minilm-l6", num_classes=2)
    model.load_state_dict(template)
    optimizer = adamw(model.parameters(), lr=5e-5)
    train_one_epoch(model, batches[:1], optimizer, precision=precision)  # warm-up: first-shape costs
    result = train_one_epoch(model, batches[1:], optimizer, precision=precision)
    return result["seconds"] / result["steps"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="matmul size")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()

    splits = split_dataset(load_dataset("rotten-tomatoes"), train_size=2000, val_size=32, test_size=32)
    loader = make_loader(splits.train, "minilm-l6", batch_size=32, shuffle=True)
    batches = [b for _, b in zip(range(args.steps + 1), loader)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:]) / args.steps
    torch.manual_seed(0)
    template = load_model("minilm-l6", num_classes=2).state_dict()

    flops = {"fp32": [], "bf16": []}
    steps = {p: [] for p in args.precisions}
    for r in range(args.rounds):
        order = args.precisions[r % len(args.precisions):] + args.precisions[:r % len(args.precisions)]
        pairs = [("fp32", torch.float32), ("bf16", torch.bfloat16)]
        for dtype_name, dtype in pairs if r % 2 == 0 else pairs[::-1]:
            flops[dtype_name].append(matmul_gflops(dtype, args.size))
        for precision in order:
            steps[precision].append(step_seconds(template, batches, precision))
            print(f"round {r + 1} {precision}: {steps[precision][-1]:.3f} s/step", file=sys.stderr)

    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if _has_flag(f)]
    print(f"\n{cpu_name()}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}, "
          f"dispatch {torch.backends.cpu.get_cpu_capability()}, flags {' '.join(flags) or 'unknown'}; "
          f"native bf16: {cpu_has_native_bf16()}; precision='auto' runs {resolve_precision('auto', 'cpu')}")
    print(f"matmul {args.size}^3 (median of {args.rounds}): " +
          ", ".join(f"{k} {statistics.median(v):.0f} GFLOP/s" for k, v in flops.items()) +
          f" (bf16/fp32 {statistics.median(flops['bf16']) / statistics.median(flops['fp32']):.2f}x)")
    base = statistics.median(steps[args.precisions[0]])
    print(f"\nMiniLM-L6 training step, batch 32, {tokens:.0f} tokens per batch on average, {args.steps} steps x "
          f"{args.rounds} rounds (median)")
    print(f"| precision | seconds per step | vs {args.precisions[0]} |\n|---|---|---|")
    for precision, values in steps.items():
        print(f"| {precision} | {statistics.median(values):.3f} | {base / statistics.median(values):.2f}x |")


def _has_flag(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return flag in next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False


if __name__ == "__main__":
    main()
