"""Pool the results.csv of several `ftlib compare` runs into one summary table.

    python bench/techniques/summarize.py bench/results/rt2000-seed* --out bench/results/rt2000
"""
import argparse
import csv
from pathlib import Path

from ftlib.compare import _save_plots, summarize, summary_markdown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for folder in args.folders:
        path = Path(folder) / "results.csv"
        if path.exists():
            rows += list(csv.DictReader(open(path)))
    summary = summarize(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_markdown(summary)
    (out / "summary.md").write_text(table)
    _save_plots(summary, out)
    print(table)


if __name__ == "__main__":
    main()
