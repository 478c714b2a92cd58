"""Execute solution notebooks headless and print wall time and peak kernel memory for each.

    python scripts/measure_notebooks.py                    # every assignment, full budget
    python scripts/measure_notebooks.py 06_train_and_monitor --grading   # NBGRADER_EXECUTION=autograde
    python scripts/measure_notebooks.py --release          # the learner versions (errors expected)

Exit status 1 if a solution notebook raised an error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_notebooks import assignments, errors, release_notebook, run_notebook, solution_notebook  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--grading", action="store_true", help="the small budget used under nbgrader")
    parser.add_argument("--release", action="store_true", help="run course/ notebooks instead of solutions/")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernel")
    parser.add_argument("--save", metavar="DIR", help="write the executed notebooks there (never into the repo)")
    args = parser.parse_args(argv)
    env = {"NBGRADER_EXECUTION": "autograde"} if args.grading else {}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    failed = 0
    print(f"{'notebook':24s} {'seconds':>8s} {'peak MB':>8s}  errors")
    for name in args.names or assignments():
        path = release_notebook(name) if args.release else solution_notebook(name)
        nb, seconds, peak = run_notebook(path, env=env, allow_errors=True)
        found = errors(nb)
        if args.save:
            import nbformat

            Path(args.save).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(Path(args.save) / f"{name}.ipynb"))
        failed += bool(found) and not args.release
        print(f"{name:24s} {seconds:8.1f} {peak:8.0f}  {len(found)} {found[:2] if found else ''}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
