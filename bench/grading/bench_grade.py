"""Time `ftlib grade --workers N` against serial `nbgrader autograde` on the same submissions.

Builds a throw-away course in a temporary directory from an assignment's source
(the toy ``ps1`` of the grading tests by default, or ``solutions/<assignment>`` of this
repository), releases it with nbgrader, writes N copies of the reference answers as
submissions, then in one run times:

1. ``nbgrader autograde ASSIGNMENT`` (serial, nbgrader's own command line);
2. ``ftlib grade ASSIGNMENT --workers W --force`` on the same submissions;
3. ``ftlib check NOTEBOOK`` on one learner notebook.

Each is a fresh command-line process, as a user runs it, so every figure includes the
command's own start-up and imports. Prints wall times and the ratio; asserts nothing.

    .venv/bin/python bench/grading/bench_grade.py                 # toy ps1, 20 submissions
    .venv/bin/python bench/grading/bench_grade.py --assignment 01_choose_model -n 4
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from ftlib.grading.grade import _load_coursedir, _with_venv_path  # noqa: E402

TOY = os.path.join(REPO, "tests", "grading", "fixtures", "ps1")
CONFIG = """c = get_config()
import os
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"
c.Execute.timeout = {cell_timeout}
"""


def _grade_id(cell):
    return (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")


def make_course(root: str, assignment: str, cell_timeout: int) -> str:
    from nbgrader.converters import GenerateAssignment

    src = TOY if assignment == "ps1" else os.path.join(REPO, "solutions", assignment)
    if not os.path.isdir(src):
        raise SystemExit(f"No source for assignment {assignment!r}: {src} does not exist.")
    shutil.copytree(src, os.path.join(root, "solutions", assignment))
    with open(os.path.join(root, "nbgrader_config.py"), "w") as f:
        f.write(CONFIG.format(cell_timeout=cell_timeout))
    coursedir, cfg = _load_coursedir(root)
    coursedir.assignment_id = assignment
    os.environ.update(_with_venv_path(dict(os.environ)))
    GenerateAssignment(coursedir=coursedir, config=cfg).start()
    return os.path.join(root, "course", assignment)


def reference_submission(source_nb: dict, release_nb: dict) -> dict:
    answers = {_grade_id(c): c["source"] for c in source_nb["cells"] if _grade_id(c)}
    for cell in release_nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        if meta.get("solution") and meta.get("grade_id") in answers:
            cell["source"] = answers[meta["grade_id"]]
    return release_nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assignment", default="ps1", help="ps1 (toy) or a folder of solutions/")
    p.add_argument("-n", type=int, default=20, help="number of submissions (default 20)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cell-timeout", type=int, default=120)
    p.add_argument("--memory", default="4G")
    args = p.parse_args(argv)

    root = tempfile.mkdtemp(prefix="ftlib-bench-grade-")
    try:
        release_dir = make_course(root, args.assignment, args.cell_timeout)
        notebooks = sorted(n for n in os.listdir(release_dir) if n.endswith(".ipynb"))
        src_dir = os.path.join(root, "solutions", args.assignment)
        for i in range(args.n):
            folder = os.path.join(root, "submitted", f"student{i:03d}", args.assignment)
            os.makedirs(folder)
            for name in notebooks:
                with open(os.path.join(src_dir, name)) as f:
                    source = json.load(f)
                with open(os.path.join(release_dir, name)) as f:
                    release = json.load(f)
                with open(os.path.join(folder, name), "w") as f:
                    json.dump(reference_submission(source, release), f)

        env = _with_venv_path(dict(os.environ))
        bindir = os.path.dirname(sys.executable)

        def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            print(r.stdout[-3000:], end="")
            if r.returncode != 0:
                print(r.stderr[-2000:])
            return seconds, r

        serial, r = timed([os.path.join(bindir, "nbgrader"), "autograde", args.assignment])
        parallel, g = timed([os.path.join(bindir, "ftlib"), "grade", args.assignment, "--workers",
                             str(args.workers), "--force", "--cell-timeout", str(args.cell_timeout),
                             "--memory", args.memory])
        learner = os.path.join(root, "submitted", "student000", args.assignment, notebooks[0])
        check_s, c = timed([os.path.join(bindir, "ftlib"), "check", learner, "--release-dir",
                            os.path.join(root, "course"), "--timeout", str(args.cell_timeout)])
        rc, check_rc = g.returncode, c.returncode

        print()
        print(f"assignment {args.assignment}, {args.n} submissions, {os.cpu_count()} CPUs")
        print(f"nbgrader autograde (serial):            {serial:7.1f} s  (exit {r.returncode})")
        print(f"ftlib grade --workers {args.workers} (sandboxed):   {parallel:7.1f} s  (exit {rc})")
        print(f"ratio serial / parallel:                {serial / parallel:7.2f}")
        print(f"ftlib check, one notebook:              {check_s:7.1f} s  (exit {check_rc})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
