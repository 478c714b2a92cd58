"""Greedy generation of BBC headlines at several batch sizes: time and peak memory.

What sets ``ftlib.config.GENERATION_BATCH_SIZE``: the generative text job writes every test
article's headline twice (zero-shot and fine-tuned), so wider batches save minutes but hold
more memory. Runs ``ftlib.generative.sft.generate`` on SmolLM2-135M-Instruct (fp32) over the
first 96 test prompts of ``bbc-headlines`` (the job's split), 24 new tokens, at each batch
size in turn in one process, and prints the peak memory (max RSS, which only grows: run the
sizes in increasing order) and the time of each.

    .venv/bin/python bench/llm/bench_generate.py [--batch-sizes 8 16 32]

Nothing else should run meanwhile.
"""
import argparse
import resource
import time

from ftlib.data import load_dataset, split_chats
from ftlib.generative import sft
from ftlib.models import load_causal_lm
from ftlib.pipeline_llm import with_system


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--prompts", type=int, default=96)
    args = parser.parse_args()
    model, tokenizer = load_causal_lm("smollm2-135m")
    print(f"loaded: peak {peak_mb():,.0f} MB", flush=True)
    _, _, test = split_chats(load_dataset("bbc-headlines"), train_size=320, val_size=50, test_size=200, seed=0)
    prompts = [with_system(c[:-1]) for c in test.conversations][:args.prompts]
    for batch_size in sorted(args.batch_sizes):
        start = time.perf_counter()
        sft.generate(model, tokenizer, prompts, max_new_tokens=24, batch_size=batch_size)
        print(f"batch {batch_size}: peak {peak_mb():,.0f} MB, {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
