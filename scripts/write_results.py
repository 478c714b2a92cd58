"""Write the headline figures into README.md and bench/RESULTS.md from bench/records/.

`bench/headline.py` measures the three jobs a newcomer runs and keeps each measurement as
a JSON record in ``bench/records/``. This script writes, between marker comments, the
README's results table (the newest record) and the "Headline figures" section at the head
of bench/RESULTS.md (every record, newest first), so that no headline figure is typed by
hand. Run it after a new record:

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

LABELS = {
    "main": "MiniLM-L6 on Rotten Tomatoes",
    "image": "EfficientNet-Lite0 on Fashion-MNIST",
    "generative": "SmolLM2-135M + LoRA on Rotten Tomatoes",
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


def _accuracy(job: dict) -> str:
    text = f"{job['test_accuracy']:.4f}"
    if "zero_shot_accuracy" in job:
        text += f" (zero-shot {job['zero_shot_accuracy']:.4f})"
    return text


def readme_table(record: dict) -> str:
    """The README's table: one row per job of the newest record."""
    rows = ["| job | test accuracy | training / whole run | peak memory |", "|---|---|---|---|"]
    for name, job in record["jobs"].items():
        rows.append(f"| [{LABELS.get(name, name)}]({ANCHOR}) (`{job['command']}`) | {_accuracy(job)} | "
                    f"{job['training_seconds']:.0f} s / {job['wall_seconds']:.0f} s | "
                    f"{job['peak_memory_mb']:,.0f} MB |")
    precisions = sorted({job["precision"] for job in record["jobs"].values() if job.get("precision")})
    rows.append("")
    rows.append(f"Measured on {record['date']} on {machine_text(record['machine'])}, "
                f"at {' and '.join(precisions) or 'the default precision'} (`bench/headline.py`, "
                f"record `{record['file']}`).")
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
            out.append(f"| {LABELS.get(name, name)} | `{job['command']}` | {job['train_size']:,} / {job['test_size']:,} "
                       f"| {job['epochs']} | {job.get('precision') or '?'} | {_accuracy(job)} "
                       f"| {job['test_macro_f1']:.4f} | {job['training_seconds']:.0f} s | {job['wall_seconds']:.0f} s "
                       f"| {job['peak_memory_mb']:,.0f} MB |")
        out.append("")
    return "\n".join(out).rstrip()


def replace_between(text: str, body: str, where: str) -> str:
    """``text`` with what lies between `BEGIN` and `END` replaced by ``body``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{where} needs one {BEGIN!r} line and one {END!r} line after it.")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def written() -> dict[Path, str]:
    """What README.md and bench/RESULTS.md should hold."""
    records = load_records()
    if not records:
        raise SystemExit("No record in bench/records/: run bench/headline.py first.")
    return {
        README: replace_between(README.read_text(encoding="utf-8"), readme_table(records[0]), "README.md"),
        RESULTS: replace_between(RESULTS.read_text(encoding="utf-8"), results_section(records), "bench/RESULTS.md"),
    }


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
