"""Time `ftlib grade --workers N` against serial `nbgrader autograde` on the same submissions.

Builds a throw-away course in a temporary directory from an assignment's source
(the toy ``ps1`` of the grading tests by default, or ``solutions/<assignment>`` of this
repository), releases it with nbgrader, writes N copies of the reference answers as
submissions, then in one run times:

1. ``nbgrader autograde ASSIGNMENT`` (serial, nbgrader's own command line);
2. ``ftlib grade ASSIGNMENT --workers W --force`` on the same submissions;
3. with ``--dask``, ``ftlib grade ASSIGNMENT --local-cluster --workers W --force`` (a
   local Dask cluster of W worker processes, started by the command);
4. ``ftlib check NOTEBOOK`` on one learner notebook;
5. with ``--overhead K``, what a submission costs beyond executing its notebook: K
   submissions graded one at a time (``--workers 1``, each submission's own time as
   ``ftlib grade`` reports it) against the same notebook executed K times by nbclient
   alone (a fresh kernel each time, ``NBGRADER_EXECUTION=autograde``, in the release
   folder), in one process.

Each command is a fresh command-line process, as a user runs it, so every figure
includes the command's own start-up and imports. Prints wall times and ratios; asserts
nothing.

    .venv/bin/python bench/grading/bench_grade.py                 # toy ps1, 20 submissions
    .venv/bin/python bench/grading/bench_grade.py --assignment 01_choose_model -n 4
    .venv/bin/python bench/grading/bench_grade.py --assignment 06_train_and_monitor --dask --overhead 3
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

from ftgrade.gradebook import load_coursedir, with_venv_path  # noqa: E402

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
    coursedir, cfg = load_coursedir(root)
    coursedir.assignment_id = assignment
    os.environ.update(with_venv_path(dict(os.environ)))
    GenerateAssignment(coursedir=coursedir, config=cfg).start()
    return os.path.join(root, "course", assignment)


def reference_submission(source_nb: dict, release_nb: dict) -> dict:
    answers = {_grade_id(c): c["source"] for c in source_nb["cells"] if _grade_id(c)}
    for cell in release_nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        if meta.get("solution") and meta.get("grade_id") in answers:
            cell["source"] = answers[meta["grade_id"]]
    return release_nb


EXECUTE_ONLY = """
import json, os, sys, time
import nbformat
from nbclient import NotebookClient
release, source, name, k, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, {repo!r})
from bench_grade import reference_submission
with open(source) as f:
    src = json.load(f)
with open(os.path.join(release, name)) as f:
    rel = json.load(f)
text = json.dumps(reference_submission(src, rel))
os.environ["NBGRADER_EXECUTION"] = "autograde"
for _ in range(k):
    t0 = time.perf_counter()
    NotebookClient(nbformat.reads(text, as_version=4), timeout=timeout, kernel_name="python3",
                   resources={{"metadata": {{"path": release}}}}).execute()
    print("EXECUTED", time.perf_counter() - t0, flush=True)
"""


def execute_only(release_dir: str, source: str, name: str, k: int, timeout: int, env: dict) -> list[float]:
    """Seconds to execute the reference notebook k times with nbclient alone, kernel start included."""
    code = EXECUTE_ONLY.format(repo=os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code, release_dir, source, name, str(k), str(timeout)],
                       cwd=release_dir, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-2000:])
    return [float(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("EXECUTED")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assignment", default="ps1", help="ps1 (toy) or a folder of solutions/")
    p.add_argument("-n", type=int, default=20, help="number of submissions (default 20)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cell-timeout", type=int, default=120)
    p.add_argument("--memory", default="4G")
    p.add_argument("--dask", action="store_true", help="also time ftlib grade --local-cluster")
    p.add_argument("--overhead", type=int, default=0, metavar="K",
                   help="also measure the per-submission overhead on K submissions")
    p.add_argument("--grade-only", action="store_true",
                   help="time only ftlib grade --workers W (no nbgrader, no ftlib check): to compare two "
                        "versions of ftlib, run each on the same machine (PYTHONPATH=OTHER_CHECKOUT)")
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

        env = with_venv_path(dict(os.environ))
        bindir = os.path.dirname(sys.executable)

        def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            print(r.stdout[-3000:], end="")
            if r.returncode != 0:
                print(r.stderr[-2000:])
            return seconds, r

        if args.grade_only:
            import ftlib

            parallel, g = timed([os.path.join(bindir, "ftlib"), "grade", args.assignment, "--workers",
                                 str(args.workers), "--force", "--cell-timeout", str(args.cell_timeout),
                                 "--memory", args.memory])
            print(f"\nassignment {args.assignment}, {args.n} submissions, {os.cpu_count()} CPUs, ftlib from "
                  f"{os.path.dirname(os.path.dirname(ftlib.__file__))}")
            print(f"ftlib grade --workers {args.workers} (sandboxed):   {parallel:7.1f} s  (exit {g.returncode})")
            return 0
        serial, r = timed([os.path.join(bindir, "nbgrader"), "autograde", args.assignment])
        parallel, g = timed([os.path.join(bindir, "ftlib"), "grade", args.assignment, "--workers",
                             str(args.workers), "--force", "--cell-timeout", str(args.cell_timeout),
                             "--memory", args.memory])
        grade_cmd = [os.path.join(bindir, "ftlib"), "grade", args.assignment, "--force", "--cell-timeout",
                     str(args.cell_timeout), "--memory", args.memory]
        dask_s = None
        if args.dask:
            dask_s, d = timed([*grade_cmd, "--local-cluster", "--workers", str(args.workers)])
        overhead = None
        if args.overhead:
            students = [f"student{i:03d}" for i in range(min(args.overhead, args.n))]
            _, o = timed([*grade_cmd, "--workers", "1", *[a for s_ in students for a in ("--student", s_)]])
            graded = [float(line.rsplit("(", 1)[1].split()[0]) for line in o.stdout.splitlines()
                      if line.strip().split(" ", 1)[0] in students and line.rstrip().endswith("MiB)")]
            executed = execute_only(release_dir, os.path.join(src_dir, notebooks[0]), notebooks[0], len(students),
                                    args.cell_timeout, env)
            overhead = (graded, executed)
        learner = os.path.join(root, "submitted", "student000", args.assignment, notebooks[0])
        check_s, c = timed([os.path.join(bindir, "ftlib"), "check", learner, "--release-dir",
                            os.path.join(root, "course"), "--timeout", str(args.cell_timeout)])
        rc, check_rc = g.returncode, c.returncode

        print()
        print(f"assignment {args.assignment}, {args.n} submissions, {os.cpu_count()} CPUs")
        print(f"nbgrader autograde (serial):            {serial:7.1f} s  (exit {r.returncode})")
        print(f"ftlib grade --workers {args.workers} (sandboxed):   {parallel:7.1f} s  (exit {rc})")
        print(f"ratio serial / parallel:                {serial / parallel:7.2f}")
        if dask_s is not None:
            print(f"ftlib grade --local-cluster --workers {args.workers}: {dask_s:7.1f} s  (exit {d.returncode}); "
                  f"ratio serial / Dask {serial / dask_s:.2f}")
        print(f"ftlib check, one notebook:              {check_s:7.1f} s  (exit {check_rc})")
        if overhead is not None:
            graded, executed = overhead
            mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
            print(f"per submission, --workers 1: graded {mean(graded):.2f} s ({', '.join(f'{x:.2f}' for x in graded)}); "
                  f"notebook executed alone {mean(executed):.2f} s ({', '.join(f'{x:.2f}' for x in executed)}); "
                  f"overhead {mean(graded) - mean(executed):.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
