"""Preference tuning's figures: the starting model, SFT, SFT then DPO, SFT then SimPO.

For each seed (`SEEDS`), exactly as a user would run them (``ftlib finetune`` in a process of
its own, default settings):

1. ``sft``: ``ftlib finetune --model smollm2-135m --dataset bbc-headlines`` (LoRA SFT on the
   real headlines); its zero-shot figures are the starting model's;
2. ``dpo``: ``... --technique dpo --from <the SFT run>``: self-play pairs (chosen: the real
   headline; rejected: the SFT model's own greedy one, made once and cached), a new LoRA
   adapter on the SFT weights, the reference being those weights;
3. ``simpo``: the same with ``--technique simpo`` (no reference), on the same cached pairs;
4. the starting model scored on the same held-out pairs (`ftlib.pipeline_preference.score_pairs`,
   in a process of its own).

Every row is measured on the same held-out articles (the test split depends only on its size
and the seed) and the same held-out pairs: the ROUGE-L of the headlines each model writes
against the real ones, and the *likelihood accuracy*, how often the real headline is the more
likely of the pair (summed log-probability). Writes
``bench/records/preference-<date>-<cpu>.json``; ``scripts/write_results.py`` turns it into
bench/RESULTS.md's "Preference tuning" section.

    .venv/bin/python bench/preference.py               # 3 seeds, 25-35 minutes each on 2 cores
    .venv/bin/python bench/preference.py --seeds 0     # one seed
    .venv/bin/python bench/preference.py --data chats.jsonl   # your instruction data (a record in a temporary folder)

Nothing else should run meanwhile: the times are the machine's, not a share of it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from headline import ROOT, RECORDS, machine, write_record  # noqa: E402

from ftlib.generative.metrics import words  # noqa: E402

SEEDS = (0, 1, 2)
MODEL = "smollm2-135m"
DATASET = ["--dataset", "bbc-headlines"]
ROWS = ("start", "sft", "dpo", "simpo")
# A phrase in quotation marks: 'set to sell off film unit' or "..."; not an apostrophe (Japan's, 's).
QUOTED = re.compile(r"(?:^|(?<=\s))"  # at the start, or after a space
                    r"(?:'(?:[^']|(?<=\w)'(?=\w))+'"  # 'single quotes', an apostrophe inside allowed
                    r'|"[^"]+"|\u2018[^\u2019]+\u2019|\u201c[^\u201d]+\u201d)'  # "double", curly
                    r"(?=$|[\s,.:;?!])")  # then the end, a space or punctuation


def headline_style(texts: list[str]) -> dict:
    """How a set of headlines is written: mean words per headline, and the share with a quoted phrase.

    The real BBC headlines quote a phrase in about one in eight. ROUGE-L against them says that a
    model's headlines got worse, not how; SimPO's, at the job's defaults, quoted a phrase in 91%
    and 42% of them in two of three seeds (bench/RESULTS.md, "Preference tuning").
    """
    if not texts:
        raise ValueError("headline_style needs at least one headline.")
    return {"words": statistics.fmean(len(words(t)) for t in texts),  # as ROUGE counts them
            "quoted_share": sum(bool(QUOTED.search(t)) for t in texts) / len(texts)}


def run_style(run: Path, key: str) -> dict:
    """:func:`headline_style` of the headlines one run wrote (``key`` of its examples.json)."""
    examples = json.loads((run / "examples.json").read_text(encoding="utf-8"))
    return headline_style([e[key] for e in examples])


def finetune(args: list[str], out: Path) -> dict:
    """One ``ftlib finetune`` run in its own process, into ``out``: its metrics.json and wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftlib.cli", "finetune", "--quiet", "--out", str(out), *args],
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - start
    return metrics


def score_start(model: str, pairs_folder: str, max_length: int) -> dict:
    """The registered starting model on the held-out pairs, in a process of its own (its peak memory too)."""
    code = ("import json, resource, sys\n"
            "from ftlib.data.pairs import load_pairs\n"
            "from ftlib.models import load_causal_lm\n"
            "from ftlib.pipeline_preference import score_pairs\n"
            f"model, tokenizer = load_causal_lm({model!r})\n"
            f"scores = score_pairs(model, tokenizer, load_pairs({str(Path(pairs_folder) / 'test.jsonl')!r}), "
            f"max_length={max_length})\n"
            "scores['peak_memory_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            "print(json.dumps(scores))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _job(m: dict) -> dict:
    """What the record keeps of one run: its cost."""
    return {"training_seconds": sum(e["seconds"] for e in m["history"]), "wall_seconds": m["wall_seconds"],
            "peak_memory_mb": m["peak_memory_mb"], "train_size": m["train_size"], "epochs": m["epochs"],
            "precision": m.get("precision")}


def one_seed(base: list[str], seed: int, work: Path) -> dict:
    """The four rows for one seed: ROUGE-L, likelihood accuracy, and the cost of each training."""
    model = base[base.index("--model") + 1]
    sft_out = work / f"sft-{seed}"
    sft = finetune([*base, "--seed", str(seed)], sft_out)
    runs = {name: finetune([*base, "--technique", name, "--from", str(sft_out), "--seed", str(seed)],
                           work / f"{name}-{seed}") for name in ("dpo", "simpo")}
    dpo, simpo = runs["dpo"], runs["simpo"]
    if dpo["pairs"] != simpo["pairs"]:
        raise RuntimeError(f"DPO and SimPO trained on different pairs: {dpo['pairs']} and {simpo['pairs']}")
    start = score_start(model, dpo["pairs"], dpo["max_length"])
    rows = {
        "start": {"rougeL": sft["zero_shot"]["rougeL"], "likelihood_accuracy": start["likelihood_accuracy"],
                  "logprob_lead": start["logprob_lead"]},
        "sft": {"rougeL": sft["test"]["rougeL"], "likelihood_accuracy": dpo["before"]["likelihood_accuracy"],
                "logprob_lead": dpo["before"]["logprob_lead"],
                "rougeL_as_the_dpo_job_measured_it": dpo["before"]["rouge"]["rougeL"]},
    }
    for name, m in runs.items():
        rows[name] = {"rougeL": m["test"]["rouge"]["rougeL"], "likelihood_accuracy": m["test"]["likelihood_accuracy"],
                      "per_token_accuracy": m["test"]["per_token_accuracy"], "logprob_lead": m["test"]["logprob_lead"]}
    rows["dpo"].update({k: dpo["test"][k] for k in ("accuracy", "margin", "chosen_reward", "rejected_reward")})
    for row, run, key in (("start", sft_out, "zero_shot"), ("sft", sft_out, "fine_tuned"),
                          ("dpo", work / f"dpo-{seed}", "after"), ("simpo", work / f"simpo-{seed}", "after")):
        rows[row].update(run_style(run, key))
    return {"seed": seed, "rows": rows, "real_headlines": run_style(sft_out, "reference"),
            "held_out_pairs": dpo["test"]["num_pairs"],
            "held_out_articles": sft["test_size"], "train_pairs": dpo["train_size"],
            "start_scoring_peak_memory_mb": start["peak_memory_mb"],
            "jobs": {"sft": _job(sft), "dpo": _job(dpo), "simpo": _job(simpo)},
            "beta": {"dpo": dpo["beta"], "simpo": simpo["beta"]},
            "sft_weight": {"dpo": dpo["sft_weight"], "simpo": simpo["sft_weight"]}}


def summary(seeds: list[dict]) -> dict:
    """Mean and standard deviation over the seeds of every row's figures and every job's cost."""
    def stats(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}

    rows = {row: {key: stats([s["rows"][row][key] for s in seeds]) for key in seeds[0]["rows"][row]} for row in ROWS}
    jobs = {job: {key: stats([s["jobs"][job][key] for s in seeds])
                  for key in ("training_seconds", "wall_seconds", "peak_memory_mb")} for job in seeds[0]["jobs"]}
    out = {"rows": rows, "jobs": jobs}
    if "real_headlines" in seeds[0]:  # records from before headline_style have none
        out["real_headlines"] = {key: stats([s["real_headlines"][key] for s in seeds]) for key in seeds[0]["real_headlines"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--model", default=MODEL, help="a registered generative model")
    parser.add_argument("--data", type=Path, help="instruction data of your own instead of bbc-headlines")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the record (default: bench/records; a dry run's: a temporary folder)")
    args = parser.parse_args(argv)
    base = ["--model", args.model, *(["--data", str(args.data.resolve())] if args.data else DATASET)]
    record = {
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "machine": machine(),
        "model": args.model,
        "commands": {"sft": " ".join(["ftlib finetune", *base]),
                     "dpo": " ".join(["ftlib finetune", *base, "--technique", "dpo", "--from", "<the SFT run>"]),
                     "simpo": " ".join(["ftlib finetune", *base, "--technique", "simpo", "--from", "<the SFT run>"])},
        "seeds": [],
    }
    # Only the registered figures (the default model on bbc-headlines) go to bench/records by default.
    registered = args.model == MODEL and args.data is None
    out = args.out or (RECORDS if registered else Path(tempfile.mkdtemp(prefix="ftlib-preference-record-")))
    work = Path(tempfile.mkdtemp(prefix="ftlib-preference-"))
    try:
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            result = one_seed(base, seed, work)
            record["seeds"].append(result)
            for row in ROWS:
                r = result["rows"][row]
                print(f"  {row:6s} ROUGE-L {r['rougeL']:.4f}, likelihood accuracy {r['likelihood_accuracy']:.3f}",
                      flush=True)
            for name, job in result["jobs"].items():
                print(f"  {name:6s} training {job['training_seconds']:.0f} s, whole run {job['wall_seconds']:.0f} s, "
                      f"peak {job['peak_memory_mb']:,.0f} MB", flush=True)
            # After every seed (about half an hour each): a stopped run keeps the seeds it finished.
            record["summary"] = summary(record["seeds"])
            record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_record(record, out, "preference")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("now run scripts/write_results.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
