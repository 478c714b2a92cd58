"""The main job's training step on a GPU: where the time goes, per precision.

On one CUDA GPU, the batches ``ftlib finetune`` trains on (MiniLM-L6, Rotten Tomatoes,
batch 16, length-grouped, seed 0), stepped by ``ftlib.train.train_one_epoch`` in these
variants, each over the same ``--steps`` batches twice (the first pass meets every new
sequence length for the first time, the second only reuses what the first built):

* precision fp32 / bf16 (autocast);
* with and without ``ftlib.devices.reproducible`` (deterministic kernels; ``fit`` turns
  it on whenever it is given a seed, which ``ftlib finetune`` always is);
* with cuDNN's attention kernels allowed (PyTorch's default) or not.

It also times a bare PyTorch step (no ftlib) on the same batches as a floor, and prints
the GPU, its bf16 matrix throughput and a Markdown table of milliseconds per step.
Run (needs CUDA): python bench/foundation/bench_gpu_step.py [--steps 100]
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ftlib.data import load_dataset, make_loader, split_dataset
from ftlib.devices import autocast, reproducible, to_device
from ftlib.models import load_model, load_tokenizer
from ftlib.optim import adamw
from ftlib.train import train_one_epoch


def synchronized_seconds(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_tflops(dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, device="cuda", dtype=dtype), torch.randn(size, size, device="cuda", dtype=dtype)
    a @ b
    seconds = synchronized_seconds(lambda: [a @ b for _ in range(repeats)])
    return 2 * size ** 3 * repeats / seconds / 1e12


def bare_pass(model, optimizer, batches, precision):
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for batch in batches:
        batch = {k: v.to("cuda", non_blocking=True) for k, v in batch.items()}
        with autocast(precision, "cuda"):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            loss = loss_fn(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_step needs a CUDA GPU.")
    splits = split_dataset(load_dataset("rotten-tomatoes"), seed=0, train_size=8900)
    loader = make_loader(splits.train, "minilm-l6", batch_size=16, shuffle=True, seed=0,
                         tokenizer=load_tokenizer("minilm-l6"), max_length=64)
    batches = [b for _, b in zip(range(args.steps), loader)]
    lengths = sorted({b["input_ids"].shape[1] for b in batches})
    torch.manual_seed(0)
    template = load_model("minilm-l6", num_classes=2).state_dict()
    print(f"{torch.cuda.get_device_name()}, PyTorch {torch.__version__}, {args.steps} batches of 16, "
          f"{len(lengths)} distinct lengths ({lengths[0]}-{lengths[-1]} tokens); matmul 8192^3: "
          f"fp32 {matmul_tflops(torch.float32):.0f} TFLOP/s, bf16 {matmul_tflops(torch.bfloat16):.0f} TFLOP/s",
          flush=True)

    def run(precision, deterministic, cudnn_attention, bare=False):
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
        model = load_model("minilm-l6", num_classes=2)
        model.load_state_dict(template)
        model.to("cuda")
        optimizer = adamw(model.parameters(), lr=1e-4)
        passes = []
        with reproducible("cuda") if deterministic else contextlib.nullcontext():
            for _ in range(2):
                if bare:
                    passes.append(synchronized_seconds(lambda: bare_pass(model, optimizer, batches, precision)))
                else:
                    passes.append(synchronized_seconds(lambda: train_one_epoch(
                        model, batches, optimizer, clip_grad_norm=1.0, device="cuda", precision=precision)))
        torch.backends.cuda.enable_cudnn_sdp(True)
        return [1000 * p / len(batches) for p in passes]

    rows = []
    for precision in ("bf16", "fp32"):
        for deterministic in (True, False):
            for cudnn_attention in (True, False):
                first, second = run(precision, deterministic, cudnn_attention)
                rows.append((f"ftlib {precision}", deterministic, cudnn_attention, first, second))
                print(rows[-1], file=sys.stderr, flush=True)
        first, second = run(precision, False, True, bare=True)
        rows.append((f"bare loop {precision}", False, True, first, second))
        print(rows[-1], file=sys.stderr, flush=True)
    print("| loop | deterministic | cuDNN attention | ms/step, first pass | ms/step, second pass |")
    print("|---|---|---|---|---|")
    for name, det, cudnn, first, second in rows:
        print(f"| {name} | {'yes' if det else 'no'} | {'yes' if cudnn else 'no'} | {first:.1f} | {second:.1f} |")
    print(f"median second pass over all variants: {statistics.median(r[4] for r in rows):.1f} ms/step")


if __name__ == "__main__":
    main()
