"""Training-loop overhead: ftlib's fit vs a bare PyTorch loop vs the Hugging Face Trainer.

Same model (MiniLM-L6), same pre-collated batches, same optimizer (AdamW, constant lr),
same number of steps, same precision (``--precision auto`` resolves it for this machine:
the bare loop then runs its forward under the same autocast, the Trainer with its bf16
flag). The three loops run in rounds, in rotating order, so a noisy machine affects them
alike; the median time per loop is reported with ratios to the bare loop.
Run: .venv/bin/python bench/foundation/bench_loop.py [--steps 20 --rounds 3 --precision fp32]
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ftlib.data import load_dataset, make_loader, split_dataset
from ftlib.devices import Runtime, autocast, resolve_precision
from ftlib.models import load_model
from ftlib.train import fit


def bare_loop(model, batches, lr, precision):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with autocast(precision, "cpu"):
            loss = loss_fn(model(**inputs).logits, batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def ftlib_loop(model, batches, lr, precision):
    fit(model, batches, None, epochs=1, lr=lr, schedule="constant", clip_grad_norm=None, seed=None, progress=True,
        runtime=Runtime(precision=precision))


def trainer_loop(model, batches, lr, precision, tmp="/tmp/ftlib-bench-trainer"):
    from transformers import Trainer, TrainingArguments

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=1, num_train_epochs=1, report_to=[],
                             save_strategy="no", logging_strategy="no", use_cpu=True, max_grad_norm=0.0,
                             dataloader_num_workers=0, bf16=precision == "bf16")
    trainer = Trainer(model=model, args=args, train_dataset=batches, data_collator=lambda items: items[0],
                      optimizers=(optimizer, scheduler))
    trainer.train()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()
    precision = resolve_precision(args.precision, "cpu")
    splits = split_dataset(load_dataset("rotten-tomatoes"), train_size=args.steps * 32, val_size=32, test_size=32)
    batches = list(make_loader(splits.train, "minilm-l6", batch_size=32, shuffle=True))
    loops = {"bare PyTorch": bare_loop, "ftlib fit": ftlib_loop, "HF Trainer": trainer_loop}
    times = {name: [] for name in loops}
    torch.manual_seed(0)
    template = load_model("minilm-l6", num_classes=2).state_dict()
    for r in range(args.rounds):
        order = list(loops)[r % 3:] + list(loops)[:r % 3]
        for name in order:
            model = load_model("minilm-l6", num_classes=2)
            model.load_state_dict(template)
            start = time.perf_counter()
            loops[name](model, batches, 5e-5, precision)
            times[name].append(time.perf_counter() - start)
            print(f"round {r + 1} {name}: {times[name][-1]:.1f}s", file=sys.stderr)
    bare = statistics.median(times["bare PyTorch"])
    print(f"\n{args.steps} steps of MiniLM-L6, batch 32, {precision} (--precision {args.precision}), "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds (median)")
    print("| loop | median seconds | ratio to bare loop |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(values) / bare:.3f} |")


if __name__ == "__main__":
    main()
