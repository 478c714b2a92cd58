"""`ftlib predict` as a user runs it: start-up of one call, and throughput on 1,000 texts.

Saves MiniLM-L6 with a two-class head in a temporary folder (prediction costs the same
whatever the head learned; pass --model-dir to use a real run's model instead), writes
1,000 Rotten Tomatoes test reviews to a file, then times, as fresh command-line
processes, `ftlib predict MODEL "one text"` and `ftlib predict MODEL --file texts.txt`.
Prints the figures; asserts nothing.

    .venv/bin/python bench/foundation/bench_predict.py [--repeat 3] [--model-dir runs/.../model]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ftlib.cli", "predict", *args], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model-dir", help="a saved model (default: MiniLM-L6 with a fresh head)")
    parser.add_argument("-n", type=int, default=1000, help="texts to predict (default 1,000)")
    args = parser.parse_args()
    from ftlib.data import load_dataset, split_dataset

    work = Path(tempfile.mkdtemp(prefix="ftlib-bench-predict-"))
    model_dir = args.model_dir
    if model_dir is None:
        from ftlib.models import load_model, load_tokenizer
        from ftlib.saving import save_finetuned

        model_dir = save_finetuned(load_model("minilm-l6", num_classes=2), work / "model", model_name="minilm-l6",
                                   class_names=["rotten", "fresh"], tokenizer=load_tokenizer("minilm-l6"))
    texts = split_dataset(load_dataset("rotten-tomatoes"), train_size=None, val_size=None, test_size=args.n).test.inputs
    (work / "texts.txt").write_text("\n".join(" ".join(t.split()) for t in texts) + "\n")
    one = timed([str(model_dir), texts[0]], args.repeat)
    many = timed([str(model_dir), "--file", str(work / "texts.txt")], args.repeat)
    rate = (len(texts) - 1) / max(many - one, 1e-9)
    print(f"ftlib predict, median of {args.repeat} command-line runs ({os.cpu_count()} cores):")
    print(f"  one text: {one:.1f} s (start-up: imports and loading the model)")
    print(f"  {len(texts):,} texts from a file: {many:.1f} s, i.e. {rate:.0f} texts/s after start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
