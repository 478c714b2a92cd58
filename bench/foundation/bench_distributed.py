"""`accelerate launch` with 2 CPU processes against 1 process, on the same total work.

MiniLM-L6 fine-tuned for one epoch on ``--train-size`` Rotten Tomatoes reviews, then
validated on ``--val-size``: one process with batches of 32 on every core, against two
processes (gloo) with batches of 16 each on one core each, so both take the same
optimizer steps on batches of 32. Each run is a fresh command (start-up included in
its wall time; fit's own seconds are reported too). The two-process run also checks
what the tests check: both processes end with the same weights, and the gathered
validation accuracy equals the main process evaluating those weights alone.
On 2 cores, expect no speed-up: the same arithmetic is shared out, and the processes
add gradient traffic.

Run: .venv/bin/python bench/foundation/bench_distributed.py [--train-size 512 --rounds 2]
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def worker(out: Path, train_size: int, val_size: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ftlib.data import load_dataset, make_loader, split_dataset
    from ftlib.models import load_model
    from ftlib.train import evaluate, fit

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    splits = split_dataset(load_dataset("rotten-tomatoes"), train_size=train_size, val_size=val_size, test_size=32)
    torch.manual_seed(0)
    model = load_model("minilm-l6", num_classes=2)
    train = make_loader(splits.train, "minilm-l6", batch_size=32 // world, shuffle=True)
    val = make_loader(splits.val, "minilm-l6", batch_size=64 // world, group_by_length=True)
    history = fit(model, train, val, epochs=1, lr=1e-4, progress=False)
    digest = hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    record = {"rank": rank, "world": world, "threads": torch.get_num_threads(), "fit_seconds": history[0]["seconds"],
              "val_accuracy": history[0]["val_accuracy"], "weights": digest}
    if rank == 0:
        record["alone_accuracy"] = evaluate(model, make_loader(splits.val, "minilm-l6", batch_size=64))["accuracy"]
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def run(processes: int, train_size: int, val_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FTLIB_ALLOCATOR": "system",
               "PYTHONPATH": str(ROOT)}
        worker_args = [str(HERE), "--worker", tmp, "--train-size", str(train_size), "--val-size", str(val_size)]
        if processes == 1:
            command = [sys.executable, *worker_args]
        else:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // processes))
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                       str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", "0", *worker_args]
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        ranks = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
    assert len(ranks) == processes, ranks
    return {"wall": wall, "fit": ranks[0]["fit_seconds"], "threads": ranks[0]["threads"],
            "same_weights": len({r["weights"] for r in ranks}) == 1,
            "gathered_equals_alone": ranks[0]["val_accuracy"] == ranks[0]["alone_accuracy"],
            "val_accuracy": ranks[0]["val_accuracy"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--val-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        return worker(Path(args.worker), args.train_size, args.val_size)
    results = {1: [], 2: []}
    for r in range(args.rounds):
        for processes in ((1, 2) if r % 2 == 0 else (2, 1)):
            results[processes].append(run(processes, args.train_size, args.val_size))
            print(f"round {r + 1}, {processes} process(es): {results[processes][-1]}", file=sys.stderr)
    wall = {p: statistics.median(x["wall"] for x in v) for p, v in results.items()}
    fit = {p: statistics.median(x["fit"] for x in v) for p, v in results.items()}
    print(f"\nMiniLM-L6, 1 epoch over {args.train_size} reviews + validation on {args.val_size}, "
          f"{os.cpu_count()} cores, median of {args.rounds} rounds")
    print("| run | threads per process | command wall s | fit s | vs 1 process (fit) |\n|---|---|---|---|---|")
    for p in (1, 2):
        print(f"| {p} process{'es' if p > 1 else ''} | {results[p][0]['threads']} | {wall[p]:.1f} | {fit[p]:.1f} | "
              f"{fit[p] / fit[1]:.2f}x |")
    two = results[2]
    accuracies = ", ".join(f"{x['val_accuracy']:.4f}" for x in two)
    print(f"2 processes: same weights on both in {sum(x['same_weights'] for x in two)}/{len(two)} runs; gathered "
          f"validation accuracy = one process on the same weights in "
          f"{sum(x['gathered_equals_alone'] for x in two)}/{len(two)} runs "
          f"(accuracy {accuracies})")


if __name__ == "__main__":
    main()
