"""Grade a real course assignment the way an instructor would, and print what came out.

Builds a course outside the repository (``/var/tmp`` by default) from
``solutions/<assignment>``, releases it with nbgrader, and submits the reference answers
under realistic student ids (e-mail addresses, a 100-character LMS id, non-ASCII
letters) and a short id, plus the untouched release (a stub). Runs ``ftlib grade`` as a
command line, grades one student again with ``--student``, and prints the CSV, so that
every id can be seen to score what the short id scores and no row to be lost.

    .venv/bin/python bench/grading/real_class.py --assignment 02_prepare_data
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_grade import make_course, reference_submission  # noqa: E402

IDS = ["ref", "syntax_error_one_exercise", "ada.lovelace+ml-2026@students.example-university.edu",
       "lms_" + "0123456789abcdef-" * 5 + "x" * 11, "zoë.núñez-åström_李小龍@universität.de"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assignment", default="02_prepare_data")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--base", default="/var/tmp", help="where the throw-away course is made")
    p.add_argument("--keep", action="store_true", help="leave the course folder for inspection")
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="ftlib-real-class-", dir=args.base)
    try:
        release_dir = make_course(root, args.assignment, 300)
        src_dir = os.path.join(root, "solutions", args.assignment)
        notebooks = sorted(n for n in os.listdir(release_dir) if n.endswith(".ipynb"))
        for student in IDS + ["stub"]:
            folder = os.path.join(root, "submitted", student, args.assignment)
            os.makedirs(folder)
            for name in notebooks:
                with open(os.path.join(release_dir, name)) as f:
                    nb = json.load(f)
                if student != "stub":
                    with open(os.path.join(src_dir, name)) as f:
                        nb = reference_submission(json.load(f), nb)
                with open(os.path.join(folder, name), "w") as f:
                    json.dump(nb, f)
        ftlib = os.path.join(os.path.dirname(sys.executable), "ftlib")
        for extra in ([], ["--student", IDS[2], "--force"]):
            t0 = time.perf_counter()
            r = subprocess.run([ftlib, "grade", args.assignment, "--workers", str(args.workers), *extra],
                               cwd=root, capture_output=True, text=True)
            print(r.stdout[-4000:], r.stderr[-2000:], f"exit {r.returncode}, {time.perf_counter() - t0:.1f} s", sep="")
        with open(os.path.join(root, "grades", f"{args.assignment}.csv"), encoding="utf-8") as f:
            for row in csv.DictReader(f):
                print(f"{row['student'][:60]:<60} {row['total']:>5} / {row['max_total']:<5} {row['status']}  {row['message'][:80]}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
