"""Preference-tuning settings tried on one SFT run: each setting's headlines, preference and cost.

bench/preference.py measures the job's defaults over seeds. Choosing those defaults needs the
opposite: one SFT run, its cached self-play pairs and its held-out articles, and several settings
of the DPO or SimPO job on top, each ``ftlib finetune --technique T --from <the SFT run>`` plus the
setting's flags, in a process of its own. The job's defaults are always the first row.

    .venv/bin/python bench/preference_settings.py --technique simpo --try "--lr 5e-5" --try "--sft-weight 2"
    .venv/bin/python bench/preference_settings.py --technique dpo --sft runs/sft-0 --try "--beta 0.5"
    .venv/bin/python bench/preference_settings.py --technique simpo --try "--lr 5e-5" --dry-run

Writes ``bench/records/preference_settings-<date>-<cpu>.json`` (``--out`` to change the folder)
after every setting, and prints a table. Each row: ROUGE-L of the headlines against the real ones,
how often the real headline is the more likely of a held-out pair, DPO's held-out reward accuracy
and margin, how the headlines are written (words, share quoting a phrase: bench/preference.py's
``headline_style``), training seconds and peak memory. Nothing else should run meanwhile.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from headline import ROOT, RECORDS, machine, write_record  # noqa: E402
from preference import DATASET, MODEL, finetune, run_style  # noqa: E402

# Flags a setting may change: the preference job's own. Anything else (--out, --from, --seed,
# --technique, the data) would measure a different experiment.
SETTINGS = ("--lr", "--beta", "--gamma", "--sft-weight", "--epochs", "--batch-size", "--precision", "--train-size",
            "--lora-rank")


def setting(text: str, technique: str) -> list[str]:
    """One ``--try`` value as finetune flags (``--flag value`` pairs), or ``ValueError`` saying what is wrong."""
    flags = shlex.split(text)
    if len(flags) % 2:
        raise ValueError(f"--try {text!r}: expected flags and their values, like --try \"--lr 5e-5 --beta 0.5\".")
    allowed = SETTINGS if technique == "simpo" else tuple(f for f in SETTINGS if f != "--gamma")
    for flag in flags[::2]:
        if flag not in allowed:
            raise ValueError(f"--try {text!r}: {flag} is not a setting to try for {technique}; use "
                             f"{', '.join(allowed)}.")
    return flags


def row(name: str, flags: list[str], m: dict, run: Path) -> dict:
    """What the record keeps of one setting's run."""
    test = m["test"]
    out = {"setting": name, "flags": flags, "rougeL_before": m["before"]["rouge"]["rougeL"],
           "rougeL": test["rouge"]["rougeL"], "likelihood_accuracy_before": m["before"]["likelihood_accuracy"],
           "likelihood_accuracy": test["likelihood_accuracy"], "lr": m.get("lr"), "beta": m.get("beta"),
           "gamma": m.get("gamma"), "sft_weight": m.get("sft_weight"), "precision": m.get("precision"),
           "training_seconds": sum(e["seconds"] for e in m["history"]), "wall_seconds": m["wall_seconds"],
           "peak_memory_mb": m["peak_memory_mb"], **run_style(run, "after")}
    out.update({k: test[k] for k in ("accuracy", "margin", "chosen_reward", "rejected_reward") if k in test})
    return out


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| setting | ROUGE-L before -> after | real headline more likely | reward accuracy, margin | "
             "words, quoted | training | peak memory |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        reward = f"{r['accuracy']:.3f}, {r['margin']:+.3f}" if "margin" in r else ""
        lines.append(f"| {r['setting']} | {r['rougeL_before']:.4f} -> {r['rougeL']:.4f} | "
                     f"{r['likelihood_accuracy_before']:.1%} -> {r['likelihood_accuracy']:.1%} | {reward} | "
                     f"{r['words']:.1f}, {r['quoted_share']:.0%} | {r['training_seconds']:.0f} s | "
                     f"{r['peak_memory_mb']:,.0f} MB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--technique", choices=("dpo", "simpo"), required=True)
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="FLAGS",
                        help='a setting, as finetune flags in one string: --try "--lr 5e-5 --sft-weight 2"')
    parser.add_argument("--sft", type=Path, help="an SFT run to start from (default: train one, the job's defaults)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RECORDS, help="folder of the record (default: bench/records)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    args = parser.parse_args(argv)
    if args.sft is not None and not (args.sft / "adapter" / "adapter_config.json").is_file():
        parser.error(f"--sft {args.sft}: no LoRA run there (adapter/adapter_config.json); give an SFT run's folder.")
    try:
        tries = [("(the job's defaults)", [])] + [(t, setting(t, args.technique)) for t in args.tries]
    except ValueError as e:
        parser.error(str(e))
    work = args.keep or (Path("<a temporary folder>") if args.dry_run
                         else Path(tempfile.mkdtemp(prefix="ftlib-preference-settings-")))
    base = ["--model", MODEL, *DATASET, "--seed", str(args.seed)]
    sft = args.sft or work / f"sft-{args.seed}"
    if args.dry_run:
        if args.sft is None:
            print(" ".join(["ftlib finetune", *base, "--out", str(sft)]))
        for i, (_, flags) in enumerate(tries):
            print(" ".join(["ftlib finetune", *base, "--technique", args.technique, "--from", str(sft), *flags,
                            "--out", str(work / f"{args.technique}-{i}")]))
        return 0
    if args.sft is None:
        finetune(base, sft)
    record = {"date": datetime.date.today().isoformat(),
              "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip(),
              "machine": machine(), "technique": args.technique, "seed": args.seed, "sft_run": str(sft),
              "command": " ".join(["ftlib finetune", *base, "--technique", args.technique, "--from", "<the SFT run>"]),
              "real_headlines": run_style(sft, "reference"), "rows": []}
    for i, (name, flags) in enumerate(tries):
        run = work / f"{args.technique}-{i}"
        print(f"{name}: {' '.join(flags) or 'no flags'}", flush=True)
        record["rows"].append(row(name, flags, finetune([*base, "--technique", args.technique, "--from", str(sft),
                                                         *flags], run), run))
        record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_record(record, args.out, "preference_settings", f"-{args.technique}")
    real = record["real_headlines"]
    print(f"\nthe real headlines: {real['words']:.1f} words, {real['quoted_share']:.0%} quoted\n" + table(record["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
