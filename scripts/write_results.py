"""Write the headline figures into README.md and bench/RESULTS.md from bench/records/.

`bench/headline.py` measures the jobs a newcomer runs and keeps each measurement as a JSON
record in ``bench/records/``. This script writes, between marker comments, the README's
results table (each job from the newest record that has it) and the "Headline figures"
section at the head of bench/RESULTS.md (every record, newest first), so that no headline
figure is typed by hand. Run it after a new record:

    .venv/bin/python scripts/write_results.py           # rewrite both files
    .venv/bin/python scripts/write_results.py --check   # exit 1 if either is out of date
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bench" / "records"
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN = "<!-- headline:begin: written by scripts/write_results.py from bench/records/, do not edit -->"
END = "<!-- headline:end -->"
# bench/decoding.py's records, in their own section of bench/RESULTS.md.
DECODING_BEGIN = "<!-- decoding:begin: written by scripts/write_results.py from bench/records/, do not edit -->"
DECODING_END = "<!-- decoding:end -->"
# bench/preference.py's records, in their own section of bench/RESULTS.md.
PREFERENCE_BEGIN = "<!-- preference:begin: written by scripts/write_results.py from bench/records/, do not edit -->"
PREFERENCE_END = "<!-- preference:end -->"
PREFERENCE_ROWS = {"start": "starting model (SmolLM2-135M-Instruct)", "sft": "after SFT (LoRA)",
                   "dpo": "after SFT, then DPO", "simpo": "after SFT, then SimPO (no reference)"}

LABELS = {
    "main": "MiniLM-L6 on Rotten Tomatoes",
    "image": "EfficientNet-Lite0 on Fashion-MNIST",
    "generative": "SmolLM2-135M + LoRA on Rotten Tomatoes",
    "headlines": "SmolLM2-135M + LoRA writing BBC headlines",
}
ANCHOR = "bench/RESULTS.md#headline-figures"


def load_records(folder: Path = RECORDS) -> list[dict]:
    """Every record in ``folder``, newest first (by date, then file name)."""
    records = []
    for path in sorted(folder.glob("headline-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        record["file"] = path.name
        records.append(record)
    return sorted(records, key=lambda r: (r["date"], r["file"]), reverse=True)


def machine_text(m: dict) -> str:
    """``Intel(R) Xeon(R) Processor (family 6, model 207; avx2, avx512f), 2 cores``."""
    detail = f"family {m['family']}, model {m['model']}" if m.get("family") else ""
    flags = ", ".join(m.get("flags") or ()) or "no AVX2"
    return f"{m['cpu']} ({'; '.join(x for x in (detail, flags) if x)}), {m['cores']} cores"


def _mean(job: dict, key: str, digits: int = 4) -> str:
    """``job[key]``, with ``± std`` when the job ran over several seeds."""
    text = f"{job[key]:.{digits}f}"
    return text + f" ± {job[key + '_std']:.{digits}f}" if f"{key}_std" in job else text


def _accuracy(job: dict) -> str:
    """The test score: accuracy (classes) or ROUGE-L (text), and zero-shot's where there was one."""
    if "test_rougeL" in job:
        return f"ROUGE-L {_mean(job, 'test_rougeL')} (zero-shot {_mean(job, 'zero_shot_rougeL')})"
    text = f"{job['test_accuracy']:.4f}"
    if "zero_shot_accuracy" in job:
        text += f" (zero-shot {job['zero_shot_accuracy']:.4f})"
    return text


def _seeds(job: dict) -> str:
    return f", seeds {', '.join(map(str, job['seeds']))}" if "seeds" in job else ""


def newest_jobs(records: list[dict]) -> dict[str, tuple[dict, dict]]:
    """Each job's newest measurement, as ``name -> (job, its record)``, in `LABELS`' order."""
    newest: dict[str, tuple[dict, dict]] = {}
    for record in records:  # newest first
        for name, job in record["jobs"].items():
            newest.setdefault(name, (job, record))
    order = [*LABELS, *sorted(set(newest) - set(LABELS))]
    return {name: newest[name] for name in order if name in newest}


def readme_table(records: list[dict], preference: list[dict] = ()) -> str:
    """The README's table: one row per job, each from the newest record that has it, and DPO's
    from the newest bench/preference.py record."""
    rows = ["| job | test score | training / whole run | peak memory |", "|---|---|---|---|"]
    jobs = newest_jobs(records)
    for name, (job, _) in jobs.items():
        rows.append(f"| [{LABELS.get(name, name)}]({ANCHOR}) (`{job['command']}`{_seeds(job)}) | {_accuracy(job)} | "
                    f"{job['training_seconds']:.0f} s / {job['wall_seconds']:.0f} s | "
                    f"{job['peak_memory_mb']:,.0f} MB |")
    if preference:
        p = preference[0]
        rows_, cost = p["summary"]["rows"], p["summary"]["jobs"]["dpo"]
        rows.append(f"| [SmolLM2-135M: SFT, then DPO on BBC headline pairs](bench/RESULTS.md#preference-tuning) "
                    f"(`{p['commands']['dpo']}`, seeds {', '.join(str(s['seed']) for s in p['seeds'])}) | "
                    f"ROUGE-L {_pm(rows_['dpo']['rougeL'])} (after SFT {_pm(rows_['sft']['rougeL'])}); "
                    f"likelihood accuracy {_pm(rows_['dpo']['likelihood_accuracy'], 3)} (after SFT "
                    f"{_pm(rows_['sft']['likelihood_accuracy'], 3)}) | {cost['training_seconds']['mean']:.0f} s / "
                    f"{cost['wall_seconds']['mean']:.0f} s | {cost['peak_memory_mb']['mean']:,.0f} MB |")
    rows.append("")
    used = {record["file"]: record for _, record in jobs.values()}
    for record in used.values():
        names = [name for name, (_, r) in jobs.items() if r is record]
        precisions = sorted({record["jobs"][n]["precision"] for n in names if record["jobs"][n].get("precision")})
        which = "" if len(used) == 1 else f"{', '.join(LABELS.get(n, n) for n in names)}: "
        rows.append(f"{which}Measured on {record['date']} on {machine_text(record['machine'])}, "
                    f"at {' and '.join(precisions) or 'the default precision'} (`bench/headline.py`, "
                    f"record `{record['file']}`).")
    if preference:
        p = preference[0]
        old = "" if any(p["seeds"][0].get("sft_weight", {}).values()) else \
            ": the job before its SFT term, which now stops this collapse (bench/RESULTS.md)"
        rows.append(f"SFT, then DPO: measured on {p['date']} on {machine_text(p['machine'])} (`bench/preference.py`, "
                    f"record `{p['file']}`; {_sft_term(p['seeds'][0])}, {_precisions(p['seeds'][0])}{old}); likelihood "
                    f"accuracy: how often the real headline is the more likely of a held-out pair against the SFT "
                    f"model's own.")
    if any("test_rougeL" in job for job, _ in jobs.values()):
        rows.append("ROUGE-L: the F1 of the longest common word subsequence with the real headline "
                    "(`ftlib.generative.metrics`); ± is the standard deviation over the seeds.")
    return "\n".join(rows)


def results_section(records: list[dict]) -> str:
    """The head of bench/RESULTS.md: every record, newest first, with everything it holds."""
    out = ["## Headline figures", "",
           "The three jobs a newcomer runs, at their defaults (seed 0, each test set touched once), measured by",
           "`bench/headline.py` (nothing else running) and kept in `bench/records/`; this section and the",
           "README's table are written from those files by `scripts/write_results.py`. Newest first.", ""]
    if not records:
        out.append("No record yet: run `bench/headline.py`.")
    for r in records:
        out += [f"### {r['date']}: {machine_text(r['machine'])}", "",
                f"torch {r['machine'].get('torch', '?')}, commit `{r.get('commit') or '?'}`, record `{r['file']}`.",
                "",
                "| job | command | train / test examples | epochs | precision | test accuracy | macro F1 "
                "| training | whole run | peak memory |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for name, job in r["jobs"].items():
            f1 = f"{job['test_macro_f1']:.4f}" if "test_macro_f1" in job else "-"
            out.append(f"| {LABELS.get(name, name)} | `{job['command']}`{_seeds(job)} | {job['train_size']:,} / "
                       f"{job['test_size']:,} | {job['epochs']} | {job.get('precision') or '?'} | {_accuracy(job)} "
                       f"| {f1} | {job['training_seconds']:.0f} s | {job['wall_seconds']:.0f} s "
                       f"| {job['peak_memory_mb']:,.0f} MB |")
        out.append("")
        for name, job in r["jobs"].items():
            if "runs" in job and "test_rougeL" in job:
                out += text_runs(LABELS.get(name, name), job)
    return "\n".join(out).rstrip()


def text_runs(label: str, job: dict) -> list[str]:
    """Each seed of a job whose answers are text: ROUGE before and after, intervals, lengths."""
    out = [f"{label}, each seed (95% bootstrap intervals over the test examples; the gain's is paired):", "",
           "| seed | ROUGE-L zero-shot | ROUGE-L fine-tuned | gain | ROUGE-1 / ROUGE-2 fine-tuned "
           "| words written / in the references | training | peak memory |",
           "|---|---|---|---|---|---|---|---|"]
    for run in job["runs"]:
        zl, zh = run["zero_shot_rougeL_95ci"]
        tl, th = run["test_rougeL_95ci"]
        gl, gh = run["rougeL_gain_95ci"]
        out.append(f"| {run['seed']} | {run['zero_shot_rougeL']:.4f} ({zl:.3f}-{zh:.3f}) | {run['test_rougeL']:.4f} "
                   f"({tl:.3f}-{th:.3f}) | {run['test_rougeL'] - run['zero_shot_rougeL']:+.4f} ({gl:+.3f} to "
                   f"{gh:+.3f}) | {run['test_rouge1']:.4f} / {run['test_rouge2']:.4f} | "
                   f"{run['test_predicted_words']:.1f} / {run['test_reference_words']:.1f} (zero-shot "
                   f"{run['zero_shot_predicted_words']:.1f}) | {run['training_seconds']:.0f} s | "
                   f"{run['peak_memory_mb']:,.0f} MB |")
    return [*out, ""]


def decoding_section(records: list[dict]) -> str:
    """bench/decoding.py's records, newest first: tokens per second and each step against its floor."""
    out = ["## Decoding speed", "",
           "Greedy decoding of SmolLM2-135M-Instruct with the KV cache, measured by `bench/decoding.py` (the median of",
           "its rounds; nothing else running) and kept in `bench/records/decoding-*.json`. A step at batch 1 reads",
           "every weight once: the floor is the weights' size over the memory bandwidth the script measures.", ""]
    for r in records:
        out += [f"### {r['date']}: {machine_text(r['machine'])}", "",
                f"{r['new_tokens']} new tokens after a {r['prompt_tokens']}-token prompt, {r['rounds']} rounds; "
                f"native bf16: {'yes' if r['bf16_native'] else 'no'}; read bandwidth "
                f"{r['read_bandwidth_gb_s']:.1f} GB/s; commit `{r.get('commit') or '?'}`, record `{r['file']}`.", "",
                "| path | precision | batch | new tokens/s | ms per step | floor (weights / bandwidth) |",
                "|---|---|---|---|---|---|"]
        for x in r["results"]:
            out.append(f"| {x['path']} | {x['precision']} | {x['batch']} | {x['tokens_per_second']:.1f} | "
                       f"{x['ms_per_step']:.1f} | {x['bandwidth_floor_ms_per_step']:.1f} ms ({x['weight_mb']:,.0f} MB) |")
        out.append("")
    return "\n".join(out).rstrip()


def _pm(stats: dict, digits: int = 4) -> str:
    """``mean ± std`` over the seeds (the mean alone for one seed)."""
    text = f"{stats['mean']:,.{digits}f}"
    return text if stats["std"] is None else f"{text} ± {stats['std']:,.{digits}f}"


def _sft_term(seed: dict) -> str:
    """The SFT term's weights of one seed's DPO and SimPO runs (records before it existed had none)."""
    weights = seed.get("sft_weight") or {"dpo": 0.0, "simpo": 0.0}
    if not any(weights.values()):
        return "no SFT term"
    return f"SFT term weight {weights['dpo']:g} for DPO (RPO), {weights['simpo']:g} for SimPO (CPO-SimPO)"


def _precisions(seed: dict) -> str:
    """The precision the runs trained at (records before it was kept say nothing)."""
    found = sorted({job.get("precision") for job in seed["jobs"].values()} - {None})
    return f"precision {' and '.join(found)}" if found else "precision not recorded"


def _preference_table(record: dict) -> list[str]:
    """Each model's ROUGE-L and likelihood accuracy; with how its headlines are written where the
    record keeps it (words per headline, share with a quoted phrase; the real headlines' too)."""
    rows, real = record["summary"]["rows"], record["summary"].get("real_headlines")
    styled = real is not None
    head = "| model | ROUGE-L of its headlines | likelihood accuracy on held-out pairs |"
    out = [head + (" words per headline | headlines with a quoted phrase |" if styled else ""),
           "|---|---|---|" + ("---|---|" if styled else "")]
    if styled:
        out.append(f"| the real headlines | | | {_pm(real['words'], 1)} | {_pm_percent(real['quoted_share'])} |")
    for name, label in PREFERENCE_ROWS.items():
        row = rows[name]
        line = f"| {label} | {_pm(row['rougeL'])} | {_pm(row['likelihood_accuracy'], 3)} |"
        if styled:
            line += f" {_pm(row['words'], 1)} | {_pm_percent(row['quoted_share'])} |"
        out.append(line)
    return out


def _pm_percent(stats: dict) -> str:
    """A share's ``mean ± std`` over the seeds in percent."""
    text = f"{stats['mean']:.0%}"
    return text if stats["std"] is None else f"{text} ± {stats['std'] * 100:.0f}"


def preference_section(records: list[dict]) -> str:
    """bench/preference.py's records, newest first: each model's held-out figures over the seeds, and the cost."""
    out = ["## Preference tuning", "",
           "The starting model, SFT, and SFT followed by DPO or by SimPO, on the same held-out BBC articles and the",
           "same held-out self-play pairs (chosen: the real headline; rejected: the SFT model's own), measured by",
           "`bench/preference.py` (nothing else running) and kept in `bench/records/preference-*.json`. Likelihood",
           "accuracy: how often the real headline is the more likely of its pair (summed log-probability). ± is the",
           "standard deviation over the seeds (none with one seed).", ""]
    for r in records:
        seeds = [s["seed"] for s in r["seeds"]]
        first = r["seeds"][0]
        out += [f"### {r['date']}: {machine_text(r['machine'])}", "",
                f"Seeds {', '.join(map(str, seeds))}; {first['held_out_articles']} held-out articles, "
                f"{first['held_out_pairs']} held-out pairs, {first['train_pairs']} training pairs; DPO beta "
                f"{first['beta']['dpo']:g}, SimPO beta {first['beta']['simpo']:g}; {_sft_term(first)}; "
                f"{_precisions(first)}; commit `{r.get('commit') or '?'}`, "
                f"record `{r['file']}`. Commands: `{r['commands']['sft']}`, then `{r['commands']['dpo']}` and "
                f"`{r['commands']['simpo']}`.", "",
                *_preference_table(r)]
        dpo = r["summary"]["rows"]["dpo"]
        out += ["", f"DPO's held-out implicit rewards: preference accuracy {_pm(dpo['accuracy'], 3)}, margin "
                    f"{_pm(dpo['margin'], 3)} (chosen {_pm(dpo['chosen_reward'], 3)}, rejected "
                    f"{_pm(dpo['rejected_reward'], 3)}).", "",
                "| training run | training | whole run (with generation and evaluation) | peak memory |",
                "|---|---|---|---|"]
        for name, job in r["summary"]["jobs"].items():
            out.append(f"| {name} | {_pm(job['training_seconds'], 0)} s | {_pm(job['wall_seconds'], 0)} s | "
                       f"{_pm(job['peak_memory_mb'], 0)} MB |")
        out.append("")
    if not records:
        out.append("No record yet: run `bench/preference.py`.")
    return "\n".join(out).rstrip()


def load_bench_records(kind: str, folder: Path = RECORDS) -> list[dict]:
    """One bench script's records (``<kind>-*.json``: decoding, preference), newest first: by date,
    then by the time a record was written (``finished``; older records have none), then by name."""
    records = []
    for path in sorted(folder.glob(f"{kind}-*.json")):
        records.append({**json.loads(path.read_text(encoding="utf-8")), "file": path.name})
    return sorted(records, key=lambda r: (r["date"], r.get("finished", ""), r["file"]), reverse=True)


def replace_between(text: str, body: str, where: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with what lies between ``begin`` and ``end`` (the headline markers) replaced by ``body``."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"{where} needs one {begin!r} line and one {end!r} line after it.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def written() -> dict[Path, str]:
    """What README.md and bench/RESULTS.md should hold."""
    records = load_records()
    if not records:
        raise SystemExit("No record in bench/records/: run bench/headline.py first.")
    return {
        README: replace_between(README.read_text(encoding="utf-8"),
                                readme_table(records, load_bench_records("preference")), "README.md"),
        RESULTS: results_text(records),
    }


def results_text(records: list[dict]) -> str:
    """bench/RESULTS.md with its three written sections (headline, decoding, preference) up to date."""
    text = replace_between(RESULTS.read_text(encoding="utf-8"), results_section(records), "bench/RESULTS.md")
    text = replace_between(text, decoding_section(load_bench_records("decoding")), "bench/RESULTS.md", DECODING_BEGIN, DECODING_END)
    return replace_between(text, preference_section(load_bench_records("preference")), "bench/RESULTS.md", PREFERENCE_BEGIN,
                           PREFERENCE_END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the files are up to date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in written().items():
        if path.read_text(encoding="utf-8") != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if args.check:
        if stale:
            print(f"out of date: {', '.join(map(str, stale))}; run scripts/write_results.py")
            return 1
        print("README.md and bench/RESULTS.md hold the figures of bench/records/")
        return 0
    print(f"wrote {', '.join(map(str, stale))}" if stale else "nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
