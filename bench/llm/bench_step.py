"""Training throughput of ftlib's SFT step against a naive transformers + peft loop.

Same model (SmolLM2-135M-Instruct with LoRA r=16 on every linear layer), same batches of
Rotten Tomatoes instructions, same optimizer, in one process, in rotating rounds:

* naive: ``model(input_ids, attention_mask, labels=labels)`` in fp32, labels on every
  position (the usual first loop: the vocabulary projection at every position);
* ftlib fp32: ``ftlib.generative.sft.SFTModel``, the projection only at the labelled positions;
* ftlib bf16 autocast: the same under bf16 autocast over fp32 weights;
* ftlib bf16 weights: frozen weights stored in bf16, adapters fp32 (what ``ftlib finetune``
  runs with LoRA where the CPU has native bf16; both bf16 rows only there).

Then the machine's matrix-product throughput (fp32 and bf16, 2 threads) and the step's
model FLOPs per second next to it. Peak memory of each variant is measured in a fresh
child process (``--memory``). Run: .venv/bin/python bench/llm/bench_step.py [--steps 6 --rounds 3]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ftlib.generative import sft
from ftlib.data import load_dataset, split_dataset
from ftlib.models import load_causal_lm
from ftlib.pipeline_llm import INSTRUCTIONS, instruction_prompts


def batches(tokenizer, steps: int, batch_size: int) -> list[dict]:
    splits = split_dataset(load_dataset("rotten-tomatoes"), train_size=steps * batch_size, val_size=10,
                           test_size=10, seed=0)
    answers = INSTRUCTIONS["rotten-tomatoes"]["answers"]
    prompts = instruction_prompts("rotten-tomatoes", splits.train.inputs)
    examples = [sft.build_sft_example(tokenizer, p, answers[y], 128) for p, y in zip(prompts, splits.train.labels)]
    return [sft.collate_sft(examples[i:i + batch_size], tokenizer.pad_token_id)
            for i in range(0, len(examples), batch_size)]


def naive_step(model, batch, optimizer):
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # every real position
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def ftlib_step(wrapped, batch, optimizer):
    b = sft._fit_batch(batch)
    logits = wrapped(b["input_ids"], b["attention_mask"], b["target_mask"])
    loss = torch.nn.functional.cross_entropy(logits, b["labels"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def matmul_gflops(dtype, n: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9


def variants():
    names = ["naive fp32", "ftlib fp32"]
    return names + (["ftlib bf16 autocast", "ftlib bf16 weights"] if sft.bf16_is_native() else [])


def run_memory(name: str, steps: int, batch_size: int) -> None:
    """In a child: train ``steps`` steps of one variant and print the peak RSS."""
    model, tokenizer = load_causal_lm("smollm2-135m")
    if name.endswith("weights"):
        model.to(torch.bfloat16)
    lora = sft.add_lora(model)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)
    lora.train()
    wrapped = sft.SFTModel(lora, bf16=name.endswith("autocast"))
    for batch in batches(tokenizer, steps, batch_size):
        naive_step(lora, batch, optimizer) if name.startswith("naive") else ftlib_step(wrapped, batch, optimizer)
    print(json.dumps({"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--memory", action="store_true", help="also each variant's peak memory (child processes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.child:
        return run_memory(args.child, args.steps, args.batch_size)

    model, tokenizer = load_causal_lm("smollm2-135m")
    lora = sft.add_lora(model)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)
    lora.train()
    data = batches(tokenizer, args.steps + 1, args.batch_size)
    tokens = sum(int(b["attention_mask"].sum()) for b in data[1:])
    labelled = sum(int((b["labels"] != -100).sum()) for b in data[1:])
    wrapped = {"ftlib fp32": sft.SFTModel(lora), "ftlib bf16 autocast": sft.SFTModel(lora, bf16=True)}
    optimizers = {name: optimizer for name in ("naive fp32", "ftlib fp32", "ftlib bf16 autocast")}
    if sft.bf16_is_native():
        low, _ = load_causal_lm("smollm2-135m")
        low_lora = sft.add_lora(low.to(torch.bfloat16))
        low_lora.train()
        wrapped["ftlib bf16 weights"] = sft.SFTModel(low_lora)
        optimizers["ftlib bf16 weights"] = torch.optim.AdamW(
            [p for p in low_lora.parameters() if p.requires_grad], lr=1e-4)
    times = {name: [] for name in variants()}
    for r in range(args.rounds):
        names = variants()[r % len(variants()):] + variants()[:r % len(variants())]  # rotate the order
        for name in names:
            step = (lambda b: naive_step(lora, b, optimizer)) if name.startswith("naive") else \
                (lambda b, w=wrapped[name], o=optimizers[name]: ftlib_step(w, b, o))
            step(data[0])  # warm-up
            start = time.perf_counter()
            for batch in data[1:]:
                step(batch)
            times[name].append(time.perf_counter() - start)
    # Model FLOPs of a LoRA step, per token: forward 2N, backward through frozen weights 2N
    # (activation gradients only), N the non-embedding parameters.
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    print(f"{tokens} tokens ({labelled} labelled) in {args.steps} steps of {args.batch_size} sequences; "
          f"median of {args.rounds} rounds; CPU: {_cpu()}, bf16 native: {sft.bf16_is_native()}")
    base = statistics.median(times["naive fp32"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:19s} {tokens / t:6.0f} tokens/s  {base / t:4.2f}x naive  ~{4 * n * tokens / t / 1e9:5.1f} "
              f"GFLOP/s of model compute")
    print(f"  matmul 1024^3: fp32 {matmul_gflops(torch.float32):.0f} GFLOP/s, bf16 {matmul_gflops(torch.bfloat16):.0f} GFLOP/s")
    if args.memory:
        for name in variants():
            out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                                  "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_memory_mb"]
            print(f"  peak memory, {name}: {peak:,.0f} MB")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
