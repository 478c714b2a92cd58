"""Decoding speed of SmolLM2-135M-Instruct: ``model.generate`` against ftlib's streaming decoder.

Greedy, with the KV cache, 64 new tokens, batch 1, in one process, in rotating rounds:

* ``generate, adapter attached``: ``model.generate`` on the model with a LoRA adapter (r=16 on
  every linear layer, what ``ftlib finetune`` trains), as a notebook would call it after training;
* ``generate, plain weights``: ``model.generate`` on the weights alone;
* ``ftlib stream, merged``: ``ftlib.generative.inference.stream`` (what ``ftlib generate`` and
  ``ftlib chat`` run) on the adapter merged into a copy of the weights;

each in fp32 and, where the CPU multiplies bf16 natively, in bf16; then ``model.generate`` on
batch 8 (plain weights). A decoding step reads every weight once for one token of each row, so
its floor is the weights' bytes over the memory bandwidth: measured here by summing a 1 GB
tensor, and printed next to each path's milliseconds per step (the prompt's forward pass
included: one pass over the weights too).

Writes ``bench/records/decoding-<date>-<cpu>.json``.

    .venv/bin/python bench/decoding.py              # about 2 minutes on 2 cores
    .venv/bin/python bench/decoding.py --profile    # also the operators of one step (torch.profiler)

Nothing else should run meanwhile: the times are the machine's, not a share of it.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ftlib.generative import inference, sft  # noqa: E402
from ftlib.models import load_causal_lm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headline import ROOT, RECORDS, _slug, machine  # noqa: E402

NEW_TOKENS = 64
# A reply longer than 64 tokens, so every path makes all 64 (checked before timing).
PROMPT = "Write a long, detailed story about a dragon who learns to bake bread."
BATCH_PROMPTS = [PROMPT, "Explain how a bicycle works, step by step.", "Describe the water cycle in detail.",
                 "Write a long letter to a friend about your holidays.", "List twenty fruits and describe each.",
                 "Explain what a neural network is to a child.", "Describe a walk through a busy city market.",
                 "Write a detailed recipe for vegetable soup."]


def read_bandwidth_gb_s(gigabytes: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second of summing a ``gigabytes`` fp32 tensor (best of ``repeats``): the memory's read speed."""
    x = torch.ones(int(gigabytes * 1e9) // 4)
    x.sum()  # first touch
    best = min(_timed(x.sum) for _ in range(repeats))
    del x
    return gigabytes / best


def cpu_busy(seconds: float = 3.0) -> float:
    """The share of the CPUs' time spent busy over ``seconds`` (from /proc/stat): others' work skews the figures."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    if not Path("/proc/stat").exists():
        return float("nan")
    (total_0, idle_0), _, (total_1, idle_1) = sample(), time.sleep(seconds), sample()
    return 1 - (idle_1 - idle_0) / max(1, total_1 - total_0)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_bytes(model) -> int:
    """Bytes of the weights a step reads: every parameter once (the tied embeddings as the output layer)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied tensors are listed once


def with_adapter(base):
    """A copy of ``base`` with a LoRA adapter of the size ``ftlib finetune`` trains, not all zeros."""
    torch.manual_seed(0)
    model = sft.add_lora(copy.deepcopy(base), r=16, alpha=32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    return model.eval()


def paths(base, dtype) -> dict:
    """The batch-1 paths at ``dtype``: name -> a function running one reply of NEW_TOKENS."""
    attached = with_adapter(base.to(dtype))
    plain = base.to(dtype).eval()
    merged = inference.for_inference(attached)  # a merged copy; `attached` keeps its adapter
    return {"generate, adapter attached": (attached, "generate"), "generate, plain weights": (plain, "generate"),
            "ftlib stream, merged": (merged, "stream")}


def run_generate(model, batch: dict) -> int:
    with torch.inference_mode():  # pad and end of turn are both <|im_end|> (id 2) in SmolLM2
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=2)
    return (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]


def run_stream(model, tokenizer) -> int:
    pieces = list(inference.stream(model, tokenizer, PROMPT, max_new_tokens=NEW_TOKENS))
    assert pieces
    return NEW_TOKENS  # the prompt's reply is longer (checked in main)


def profile_step(model, tokenizer) -> None:
    from torch.profiler import ProfilerActivity, profile

    ids = inference.prompt_tokens(tokenizer, sft.chat_messages(PROMPT))
    tokens = inference.generate_tokens(model, ids, max_new_tokens=30, eos_token_id=None)
    for _ in range(10):
        next(tokens)  # warm: the cache holds the prompt and a few tokens
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            next(tokens)
    print("one decoding step, merged fp32, 10 steps profiled:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of one step")
    parser.add_argument("--out", type=Path, default=RECORDS, help="folder of the record (default: bench/records)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    info = machine()
    native = sft.bf16_is_native()
    busy = cpu_busy()
    print(f"CPU: {info['cpu']} ({', '.join(info['flags'])}), {info['cores']} threads; bf16 native: {native}; "
          f"{busy:.0%} of the CPUs busy before starting (other work skews the figures)")
    bandwidth = read_bandwidth_gb_s()
    print(f"memory read bandwidth (sum of a 1 GB tensor, best of 5): {bandwidth:.1f} GB/s (measured again at the end)")

    base, tokenizer = load_causal_lm("smollm2-135m")
    prompt = inference.prompt_tokens(tokenizer, sft.chat_messages(PROMPT))
    eot = sft.end_of_turn_id(tokenizer)
    made = list(inference.generate_tokens(base, prompt, max_new_tokens=NEW_TOKENS, eos_token_id=eot))
    assert len(made) == NEW_TOKENS and made[-1] != eot, "the reply must be longer than NEW_TOKENS"
    one = sft.collate_for_generation([prompt], tokenizer.pad_token_id)
    eight = sft.collate_for_generation([inference.prompt_tokens(tokenizer, sft.chat_messages(p))
                                        for p in BATCH_PROMPTS], tokenizer.pad_token_id)
    record = {"date": datetime.date.today().isoformat(),
              "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "machine": info, "bf16_native": native, "new_tokens": NEW_TOKENS, "prompt_tokens": len(prompt),
              "read_bandwidth_gb_s": bandwidth, "rounds": args.rounds, "cpu_busy_before": busy,
              "best_tokens_per_second": {}, "results": []}
    dtypes = [torch.float32] + ([torch.bfloat16] if native else [])
    for dtype in dtypes:
        precision = str(dtype).removeprefix("torch.")
        runs = paths(copy.deepcopy(base), dtype)
        if dtype == torch.float32:  # merged, ftlib's decoder gives the adapter-attached model's greedy tokens
            attached, merged = runs["generate, adapter attached"][0], runs["ftlib stream, merged"][0]
            with torch.inference_mode():
                expected = attached.generate(**one, max_new_tokens=32, do_sample=False, pad_token_id=2)
            assert list(inference.generate_tokens(merged, prompt, max_new_tokens=32, eos_token_id=eot)) == \
                expected[0, len(prompt):].tolist()
        times = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds + 1):  # round 0 warms up
            for name in names[r % len(names):] + names[:r % len(names)]:
                model, how = runs[name]
                start = time.perf_counter()
                made = run_generate(model, one) if how == "generate" else run_stream(model, tokenizer)
                assert made == NEW_TOKENS
                if r:
                    times[name].append(time.perf_counter() - start)
        for name, ts in times.items():
            model = runs[name][0]
            seconds = statistics.median(ts)
            record["best_tokens_per_second"][f"{name}, {precision}, batch 1"] = NEW_TOKENS / min(ts)
            floor_ms = weight_bytes(model) / 1e9 / bandwidth * 1e3
            result = {"path": name, "precision": precision, "batch": 1, "tokens_per_second": NEW_TOKENS / seconds,
                      "ms_per_step": seconds / NEW_TOKENS * 1e3, "weight_mb": weight_bytes(model) / 1e6,
                      "bandwidth_floor_ms_per_step": floor_ms}
            record["results"].append(result)
        plain = runs["generate, plain weights"][0]
        batch_times = []
        for r in range(args.rounds + 1):
            start = time.perf_counter()
            made = run_generate(plain, eight)
            if r:
                batch_times.append(time.perf_counter() - start)
        seconds = statistics.median(batch_times)
        record["best_tokens_per_second"][f"generate, plain weights, {precision}, batch 8"] = made / min(batch_times)
        record["results"].append({"path": "generate, plain weights", "precision": precision, "batch": 8,
                                  "tokens_per_second": made / seconds, "ms_per_step": seconds / NEW_TOKENS * 1e3,
                                  "weight_mb": weight_bytes(plain) / 1e6,
                                  "bandwidth_floor_ms_per_step": weight_bytes(plain) / 1e9 / bandwidth * 1e3})
        if args.profile and dtype == torch.float32:
            profile_step(runs["ftlib stream, merged"][0], tokenizer)
        del runs

    # The floor uses the best bandwidth seen, at the start or now (another process may have run meanwhile).
    again = read_bandwidth_gb_s()
    record["read_bandwidth_gb_s_end"] = again
    if again > bandwidth:
        for r in record["results"]:
            r["bandwidth_floor_ms_per_step"] *= bandwidth / again
        bandwidth = record["read_bandwidth_gb_s"] = again
    print(f"memory read bandwidth at the end: {again:.1f} GB/s")
    print(f"\nSmolLM2-135M-Instruct, greedy, KV cache, {NEW_TOKENS} new tokens after a {len(prompt)}-token prompt; "
          f"median of {args.rounds} rounds")
    print(f"  {'path':27s} {'precision':9s} {'batch':>5s} {'tokens/s':>9s} {'(best)':>7s} {'ms/step':>8s} "
          f"{'weights MB':>10s} {'floor ms/step':>13s}")
    for r in record["results"]:
        best = record["best_tokens_per_second"][f"{r['path']}, {r['precision']}, batch {r['batch']}"]
        print(f"  {r['path']:27s} {r['precision']:9s} {r['batch']:5d} {r['tokens_per_second']:9.1f} {best:7.1f} "
              f"{r['ms_per_step']:8.1f} {r['weight_mb']:10.0f} {r['bandwidth_floor_ms_per_step']:13.1f}")
    if not native:
        print("  (no bf16 rows: this CPU has no native bf16, where PyTorch emulates it more slowly than fp32)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"decoding-{record['date']}-{_slug(info['cpu'])}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
