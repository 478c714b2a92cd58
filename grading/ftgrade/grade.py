"""`ftlib grade ASSIGNMENT`: autograde a class's submissions in parallel, safely.

Works on an nbgrader course directory (``submitted/<student>/<assignment>/*.ipynb``, the
gradebook, the source folder) with nbgrader's own autograde semantics, but each
submission is graded by its own worker process (`autograde`) in a private temporary
copy, under a wall-clock ``--timeout`` and a ``--memory`` limit on its whole process
tree, with the learner's kernel sandboxed (`sandbox`) when the platform allows it.
Workers return JSON; only this process writes the real gradebook, so there is no SQLite
contention and a crashed worker cannot corrupt it. A submission that loops, exhausts
memory, kills its kernel or is not a notebook gets a status and a zero, never stops the
batch.

With ``--scheduler tcp://HOST:8786`` (or ``--local-cluster``) the same workers run as
Dask tasks on a cluster's nodes (`cluster`); this process still writes everything.

Outputs: the gradebook (auto scores and comments), ``autograded/<student>/<assignment>/``
(the graded notebooks, for formgrader), ``feedback/<student>/<assignment>/<nb>.html``
(without hidden tests unless ``--include-hidden``), a CSV with one row per student
(grading some students with ``--student`` updates their rows and keeps the others), and
``grades/logs/<assignment>/<student>.log`` for each submission whose grading failed.
Submissions are not graded again (unless ``--force``) when nothing that decides their
grade changed since the last run: their files, the assignment in the gradebook, the
source folder (notebook, hidden tests, checks module), ftlib's code and the options.

This module plans the batch and runs it; a submission is graded in `worker`, the results
are stored by `results` and nbgrader's gradebook is handled in `gradebook`.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from typing import Any

from ftgrade import sandbox
from ftgrade.feedback import hidden_delimiters
from ftgrade.gradebook import build_template, load_coursedir
from ftgrade.limits import default_workers, parse_memory, tmp_bytes
from ftgrade.results import Recorder, csv_row, printable, read_csv, write_atomic, write_csv
from ftgrade.worker import failed_run, grade_one, start_fork_server, worker_env

__all__ = ["grade_main", "grade_assignment", "STATUSES"]

STATUSES = ("ok", "timeout", "memory", "crashed", "invalid notebook", "missing")
_STATE_VERSION = 3
# Processes a submission's worker, kernel and their children may run at once: a notebook needs
# a handful (data loader workers, a tokenizer's threads are not processes); a fork bomb is refused.
MAX_PROCESSES = 256


_NOT_CONTENT = ("__pycache__", ".ipynb_checkpoints", ".git")
# ftlib's package: the checks and the reference implementations they compare against.
_CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hash_dir(path: str) -> str:
    """A digest of the names and contents of the files under ``path`` (none: the empty digest)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _NOT_CONTENT)
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            full = os.path.join(dirpath, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            if os.path.islink(full):
                h.update(b"link:" + os.fsencode(os.readlink(full)))
                continue
            try:  # a learner's fifo must not hang the grader: no blocking open, regular files only
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                h.update(b"unreadable")
                continue
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    h.update(b"not a file")
                    continue
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def grade_assignment(assignment: str, *, course_dir: str = ".", students: list[str] | None = None,
                     workers: int | None = None, timeout: float = 1800.0, cell_timeout: int | None = None,
                     memory: int | None = 4 * 2**30, csv_path: str | None = None, force: bool = False,
                     include_hidden: bool = False, use_sandbox: bool = True,
                     max_output_bytes: int = 1_000_000, scheduler: str | None = None,
                     log=print) -> list[dict[str, Any]]:
    """Autograde every submission of ``assignment``; return one CSV row (dict) per student.

    Workers are forked from a `multiprocessing` fork server, so a script that calls this
    must do it under ``if __name__ == "__main__":``, as for any multiprocessing code;
    notebooks and the ``ftlib grade`` command need nothing.

    Parameters
    ----------
    assignment : str
        The assignment id (a folder of ``submitted/<student>/``).
    course_dir : str
        The nbgrader course root (holding ``nbgrader_config.py``).
    students : list of str, optional
        Grade only these students.
    workers : int, optional
        Submissions graded at once (default: one per core this process may use, no more
        than the available memory holds at ``memory`` each; see `limits.default_workers`).
    timeout : float
        Wall-clock seconds per submission; the worker is killed after that.
    cell_timeout : int, optional
        Seconds per cell (default: ``c.Execute.timeout`` of the course config).
    memory : int, optional
        Bytes per submission (worker, kernel and children; a cgroup v2 limit where
        possible, else summed PSS); None for no limit.
    csv_path : str, optional
        Where to write the CSV (default: ``<course>/grades/<assignment>.csv``).
    force : bool
        Grade again even the submissions that did not change.
    include_hidden : bool
        Put hidden tests and full tracebacks in the HTML feedback.
    use_sandbox : bool
        Sandbox kernels with bubblewrap when it works here.
    max_output_bytes : int
        Output kept per cell during execution; the rest is dropped.
    scheduler : str, optional
        Grade on a Dask cluster: a scheduler address (``tcp://HOST:8786``), or ``"local"``
        for a cluster of ``workers`` processes here (see `cluster`). Each worker checks
        its own sandbox; this process alone writes the gradebook and the files.
    log : callable
        Receives progress lines.
    """
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"The 'workers' must be a positive integer, got {workers!r}.")
    if not timeout or timeout <= 0:
        raise ValueError(f"The 'timeout' must be a positive number of seconds, got {timeout!r}.")
    if scheduler is not None and scheduler != "local" and not re.fullmatch(r"(\w+://)?[^\s/:]+:\d+/?", scheduler):
        raise ValueError(f"The 'scheduler' must be a Dask scheduler address such as tcp://HOST:8786, got {scheduler!r}.")
    course_dir = os.path.abspath(course_dir)
    if scheduler is None:
        start_fork_server()  # it imports nbgrader on the other core while this process does the same
    coursedir, cfg = load_coursedir(course_dir)
    if cell_timeout is None:
        cell_timeout = int(cfg.Execute.get("timeout", 30) or 30)
    if cell_timeout <= 0:
        raise ValueError(f"The 'cell_timeout' must be a positive number of seconds, got {cell_timeout!r}.")
    workers = workers or default_workers(memory)
    sandboxed = _sandboxed(use_sandbox, scheduler, log)

    submitted_root = coursedir.format_path(coursedir.submitted_directory, ".", ".")
    source_dir = coursedir.format_path(coursedir.source_directory, ".", assignment)
    autograded_root = coursedir.format_path(coursedir.autograded_directory, ".", ".")
    feedback_root = coursedir.format_path(coursedir.feedback_directory, ".", ".")
    csv_path = csv_path or os.path.join(course_dir, "grades", f"{assignment}.csv")
    # Not under autograded/, whose folders are named by student ids: a student may be called anything.
    state_path = os.path.join(course_dir, "grades", f".ftlib-grade-{assignment}.json")

    work = tempfile.mkdtemp(prefix="ftlib-grade-")
    try:
        template = os.path.join(work, "template.db")
        info = build_template(coursedir.db_url, coursedir.course_id, assignment, template)
        delimiters = list(hidden_delimiters(cfg))  # the course's, as nbgrader hid them at release
        # Besides the submission, a grade depends on these: the assignment in the gradebook
        # (grade cells, points, hidden tests), the source folder (notebook, checks module,
        # data), ftlib's code and the options.
        options = json.dumps([cell_timeout, memory, include_hidden, max_output_bytes, delimiters, _STATE_VERSION,
                              info["fingerprint"], _hash_dir(source_dir), _hash_dir(_CODE_ROOT)])
        state = _read_state(state_path)
        everyone = _students(submitted_root, assignment, info, students)
        spec = {"assignment": assignment, "template_db": template, "support_dir": source_dir,
                "notebooks": sorted(info["notebooks"]), "cell_timeout": cell_timeout,
                "max_output_bytes": max_output_bytes, "sandbox": sandboxed,
                "hide": _hidden_paths(course_dir, coursedir, csv_path),
                "include_hidden": include_hidden, "hidden_delimiters": delimiters,
                # the course's own release rules, as nbgrader's generate_assignment applies them
                "ignore": list(coursedir.ignore),
                "exclude_overwriting": list(cfg.Autograde.get("exclude_overwriting", {}).get(assignment, [])),
                "cells": {nb: {k: i[k] for k in ("cell_ids", "exercises", "kinds", "tests")}
                          for nb, i in info["notebooks"].items()},
                "tmp_bytes": tmp_bytes(memory)}
        job = {"timeout": timeout, "memory": memory, "processes": MAX_PROCESSES, "env": worker_env(workers)}
        rows, jobs = _plan(everyone, submitted_root=submitted_root, info=info, state=state, options=options,
                           force=force, work=work, spec=spec, job=job)
        skipped = len(everyone) - len(jobs) - sum(1 for r in rows.values() if r["status"] == "missing")
        where = (f"on a local Dask cluster of {workers} worker(s)" if scheduler == "local"
                 else f"on the Dask cluster at {scheduler}" if scheduler else f"with {workers} worker(s)")
        log(f"Grading {len(jobs)} submission(s) of {assignment} {where}"
            f"{f'; {skipped} unchanged, not graded again (use --force)' if skipped > 0 else ''}.")
        started = time.monotonic()
        from nbgrader.api import Gradebook

        # One connection for the whole batch: opening nbgrader's Gradebook costs 0.15 s of CPU.
        with Gradebook(coursedir.db_url, coursedir.course_id) as gb:
            recorder = Recorder(gb, assignment=assignment, info=info, course_dir=course_dir,
                                roots={"autograded": autograded_root, "feedback": feedback_root},
                                logs_dir=os.path.join(course_dir, "grades", "logs", assignment),
                                timeout=timeout, memory=memory, rows=rows, state=state, log=log)
            if scheduler is not None and jobs:
                from ftgrade.cluster import grade_on_cluster

                for done in grade_on_cluster(jobs, scheduler=scheduler, workers=workers, template_db=template,
                                             support_dir=source_dir, use_sandbox=use_sandbox, log=log):
                    recorder.record(done)
            else:
                with cf.ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = {pool.submit(grade_one, job): job for job in jobs}
                    for future in cf.as_completed(futures):
                        try:
                            done = future.result()
                        except Exception as e:  # one submission's failure must not stop the others
                            done = failed_run(futures[future], e)
                        recorder.record(done)
            recorder.summarize()
        log(f"Graded {len(jobs)} submission(s) in {time.monotonic() - started:.1f} s.")
        write_atomic(state_path, json.dumps(state, indent=1))
        ordered = [rows[s] for s in sorted(rows)]
        # Grading a subset updates its rows; everyone else's stay as the last run wrote them.
        others = read_csv(csv_path, exclude=rows) if students else []
        write_csv(csv_path, sorted(ordered + others, key=lambda r: r["student"]), info)
        log(f"Wrote {csv_path}")
        return ordered
    finally:
        shutil.rmtree(work, ignore_errors=True)  # failed submissions' logs are under grades/logs/


def _sandboxed(use_sandbox: bool, scheduler: str | None, log) -> bool:
    """Whether the learners' kernels run sandboxed; a loud warning when they will not."""
    if not use_sandbox:
        log("WARNING: sandbox disabled (--no-sandbox): learner code can read solutions and use the network.")
        return False
    if scheduler is not None:
        return True  # each worker checks its own, and refuses to grade without one
    sandboxed, why = sandbox.available()
    if not sandboxed:
        log("!" * 78)
        log(f"WARNING: NO SANDBOX: {why}.")
        log("Learner code will run as this user WITH network access and can read the solutions,")
        log("the hidden tests and the gradebook. Only timeouts and memory limits apply.")
        log("!" * 78)
    return sandboxed


def _hidden_paths(course_dir: str, coursedir, csv_path: str) -> list[str]:
    """What a learner's kernel must not see: the course's folders, its gradebook and the grades."""
    db_file = coursedir.db_url[len("sqlite:///"):] if coursedir.db_url.startswith("sqlite:///") else None
    hide = [os.path.join(course_dir, d) for d in (coursedir.source_directory, coursedir.submitted_directory,
                                                  coursedir.autograded_directory, coursedir.feedback_directory,
                                                  ".git", "grades")]
    return hide + [p for p in (db_file, os.path.dirname(os.path.abspath(csv_path))) if p]


def _read_state(path: str) -> dict:
    """The re-grade state of the last run (student -> hash and row); empty when unreadable."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _students(submitted_root: str, assignment: str, info: dict, students: list[str] | None) -> list[str]:
    """Everyone with a submission or a gradebook entry, or only ``students`` (all of whom must exist)."""
    present = sorted(s for s in os.listdir(submitted_root)
                     if os.path.isdir(os.path.join(submitted_root, s, assignment))) \
        if os.path.isdir(submitted_root) else []
    everyone = sorted(set(present) | set(info["students"]))
    if students:
        unknown = sorted(set(students) - set(everyone))
        if unknown:
            raise ValueError(f"No submission or gradebook entry for student(s) {', '.join(map(printable, unknown))} "
                             f"in {assignment!r}.")
        everyone = [s for s in everyone if s in students]
    return everyone


def _plan(everyone: list[str], *, submitted_root: str, info: dict, state: dict, options: str, force: bool,
          work: str, spec: dict, job: dict) -> tuple[dict[str, dict], list[dict]]:
    """The rows of students with nothing to grade (missing, or unchanged since the last run), and a job per other.

    ``spec`` and ``job`` hold what every submission's worker spec and job share.
    """
    assignment = spec["assignment"]
    rows, jobs = {}, []
    for student in everyone:
        sub = os.path.join(submitted_root, student, assignment)
        if not os.path.isdir(sub):
            rows[student] = csv_row(student, assignment, info, None, "missing", "no submission")
            continue
        present_nbs = sorted(n for n in os.listdir(sub) if n.endswith(".ipynb"))
        if not any(f"{name}.ipynb" in present_nbs for name in info["notebooks"]):
            hint = f"; found {', '.join(present_nbs)} instead (misnamed?)" if present_nbs else ""
            rows[student] = csv_row(student, assignment, info, None, "missing", f"no expected notebook{hint}")
            continue
        digest = hashlib.sha256(f"{_hash_dir(sub)}{options}".encode()).hexdigest()
        previous = state.get(student)
        if not force and previous and previous.get("hash") == digest:
            rows[student] = previous["row"]
            continue
        # Named by number, not by student id: ids can be long, and the kernel's sockets live here.
        out_dir = os.path.join(work, str(len(jobs)))
        os.makedirs(out_dir)
        jobs.append(dict(job, student=student, hash=digest, sub=sub,
                         spec=dict(spec, student=student, submission_dir=sub, output_dir=out_dir, tmp_root=out_dir)))
    return rows, jobs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ftlib grade",
        description="Autograde all submissions of ASSIGNMENT in parallel, each isolated and limited.")
    p.add_argument("assignment", help="assignment id, e.g. 01_choose_model")
    p.add_argument("--course-dir", default=".", help="nbgrader course root (default: current directory)")
    p.add_argument("--student", action="append", help="grade only this student (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="submissions graded at once (default: usable cores, as memory allows)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per submission (default: 1800)")
    p.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: c.Execute.timeout)")
    p.add_argument("--memory", default="4G", help="memory per submission, e.g. 2G; 'none' for no limit (default: 4G)")
    p.add_argument("--csv", dest="csv_path", help="CSV output (default: grades/ASSIGNMENT.csv)")
    p.add_argument("--force", action="store_true", help="grade again submissions that did not change")
    p.add_argument("--include-hidden", action="store_true", help="show hidden tests in the HTML feedback")
    p.add_argument("--no-sandbox", action="store_true", help="do not sandbox kernels even if bubblewrap works")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="grade on the Dask cluster of this scheduler, e.g. tcp://HOST:8786")
    where.add_argument("--local-cluster", action="store_true",
                       help="grade on a Dask cluster of --workers processes started on this machine")
    return p


def grade_main(argv: list[str]) -> int:
    """Entry point of ``ftlib grade``; returns 0 when the batch ran, 2 on a usage or setup error.

    Individual submissions that fail do not change the exit status; see the CSV.
    """
    args = _parser().parse_args(argv)
    try:
        grade_assignment(args.assignment, course_dir=args.course_dir, students=args.student,
                         workers=args.workers, timeout=args.timeout, cell_timeout=args.cell_timeout,
                         memory=parse_memory(args.memory), csv_path=args.csv_path, force=args.force,
                         include_hidden=args.include_hidden, use_sandbox=not args.no_sandbox,
                         scheduler="local" if args.local_cluster else args.scheduler)
    except (ValueError, OSError) as e:
        print(f"ftlib grade: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(grade_main(sys.argv[1:]))
