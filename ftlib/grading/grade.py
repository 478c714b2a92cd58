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
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from ftlib.grading import guard, sandbox
from ftlib.grading.feedback import hidden_delimiters
from ftlib.grading.limits import default_workers, parse_memory, run_limited, watch
from ftlib.grading.notebook import imported_modules, setup_cells

__all__ = ["grade_main", "grade_assignment", "STATUSES"]

STATUSES = ("ok", "timeout", "memory", "crashed", "invalid notebook", "missing")
_SEVERITY = {s: i for i, s in enumerate(("ok", "missing", "invalid notebook", "timeout", "crashed", "memory"))}
_STATE_VERSION = 2


def _load_coursedir(course_dir: str):
    import ftlib.grading.autograde  # noqa: F401 (its import-time speed-up for jsonschema)
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    cfg = Config()
    if os.path.isfile(os.path.join(course_dir, "nbgrader_config.py")):
        cfg.merge(PyFileConfigLoader("nbgrader_config.py", path=course_dir).load_config())
    cfg.CourseDirectory.root = os.path.abspath(course_dir)
    return CourseDirectory(config=cfg), cfg


def _with_venv_path(env: dict[str, str]) -> dict[str, str]:
    # nbgrader runs the `alembic` executable when it creates a gradebook; use the one next to
    # this interpreter even when the virtualenv is not activated (as under `make test`).
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        env = dict(env, PATH=bindir + os.pathsep + path)
    return env


def _build_template(db_url: str, course_id: str, assignment: str, path: str) -> dict[str, Any]:
    """Copy ``assignment`` (cells, points, source with hidden tests) into a fresh gradebook."""
    from nbgrader.api import Gradebook

    os.environ.update(_with_venv_path(dict(os.environ)))
    with Gradebook(db_url, course_id) as gb:
        _stamp_like(gb, path)
        with Gradebook(f"sqlite:///{path}", course_id) as tpl:
            return _copy_assignment(gb, tpl, assignment, db_url)


def _stamp_like(gb, path: str) -> None:
    """Give the new SQLite gradebook at ``path`` the schema version of ``gb``.

    nbgrader stamps a new gradebook by running ``alembic heads`` in a subprocess, about
    2 s of CPU. The template has the course gradebook's schema, so its version is known.
    """
    import sqlite3

    from sqlalchemy import text

    try:
        version = gb.db.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:  # no such table: let nbgrader stamp it the slow way
        gb.db.rollback()
        return
    if version:
        with contextlib.closing(sqlite3.connect(path)) as con, con:
            con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            con.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (version,))


def _copy_assignment(gb, tpl, assignment: str, db_url: str) -> dict[str, Any]:
    from nbgrader.api import MissingEntry

    info: dict[str, Any] = {"notebooks": {}, "students": []}
    try:
        a = gb.find_assignment(assignment)
    except MissingEntry:
        raise ValueError(
            f"The assignment {assignment!r} is not in the gradebook {db_url}. Known assignments: "
            f"{', '.join(x.name for x in gb.assignments) or 'none'}. Run "
            f"'nbgrader generate_assignment {assignment}' first.") from None
    info["students"] = sorted(s.id for s in gb.students)
    tpl.add_assignment(a.name, duedate=a.duedate)
    fingerprint = hashlib.sha256()
    for nb in sorted(a.notebooks, key=lambda n: n.name):
        tpl.add_notebook(nb.name, a.name, kernelspec=nb.kernelspec)
        for c in nb.grade_cells:
            tpl.add_grade_cell(c.name, nb.name, a.name, max_score=c.max_score, cell_type=c.cell_type)
        for c in nb.solution_cells:
            tpl.add_solution_cell(c.name, nb.name, a.name)
        for c in nb.task_cells:
            tpl.add_task_cell(c.name, nb.name, a.name, max_score=c.max_score, cell_type=c.cell_type)
        for c in sorted(nb.source_cells, key=lambda c: c.name):
            tpl.add_source_cell(c.name, nb.name, a.name, cell_type=c.cell_type, locked=c.locked,
                                source=c.source, checksum=c.checksum)
            fingerprint.update(f"{nb.name}\0{c.name}\0{c.source}\0{c.checksum}\0".encode())
        for c in nb.grade_cells:
            fingerprint.update(f"{c.name}\0{c.max_score}\0".encode())
        info["notebooks"][nb.name] = {
            "grade_cells": [c.name for c in sorted(nb.grade_cells, key=lambda c: c.id)],
            "max_scores": {c.name: c.max_score for c in nb.grade_cells},
            "sources": [c.source for c in nb.source_cells],
        }
    info["fingerprint"] = fingerprint.hexdigest()
    return info


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
                h.update(b"link:" + os.readlink(full).encode())
            else:
                with open(full, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()


def _watched(course_dir: str, coursedir, assignment: str, info: dict) -> list[str]:
    # Modules the checks import: from the grade cells in the gradebook and the source's setup cells.
    from ftlib.grading.notebook import NotebookError, read_notebook

    sources = [s for nb in info["notebooks"].values() for s in nb["sources"]]
    for name in info["notebooks"]:
        path = os.path.join(coursedir.format_path(coursedir.source_directory, ".", assignment), f"{name}.ipynb")
        try:
            sources += [c.source for c in setup_cells(read_notebook(path))]
        except NotebookError:
            pass
    return guard.watched_for(imported_modules(sources))


def _forked_worker(spec_path: str, log_path: str, env: dict[str, str]) -> None:
    """Body of a worker forked from the fork server: nbgrader is already imported."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(os.path.dirname(spec_path))
    from ftlib.grading.autograde import main

    main([spec_path])


_CONTEXT: list = []


def _fork_context():
    # One fork server per grading process imports nbgrader once (about 3 s of CPU); each
    # submission is then a cheap fork of it rather than a fresh interpreter.
    import multiprocessing as mp

    if not _CONTEXT:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["ftlib.grading._preload"])
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def _start_fork_server() -> None:
    from multiprocessing import forkserver

    _fork_context()
    forkserver.ensure_running()


_LOG_BYTES = 1 << 20  # of a worker's log, the end is kept: learner code can write to it without end


def _grade_one(job: dict[str, Any]) -> dict[str, Any]:
    """Grade one submission in a worker forked under limits; return everything it produced.

    Called in a thread of the grading process, or in a Dask worker (`cluster`). The
    returned dict holds no path into the worker's folder: ``run`` (how the worker ended),
    ``result`` (its result.json, or None), ``files`` (the autograded notebooks and
    feedback pages, as text) and ``log`` (the end of its log).
    """
    out_dir = job["spec"]["output_dir"]
    spec_path = os.path.join(out_dir, "spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(job["spec"], f)
    log_path = os.path.join(out_dir, "worker.log")
    import multiprocessing as mp

    if mp.current_process().daemon:
        # A daemonic process (a Dask worker under its nanny) may not start multiprocessing
        # children: run the worker as a fresh interpreter instead of a fork.
        with open(log_path, "wb") as logf:
            r = run_limited([sys.executable, "-m", "ftlib.grading.autograde", spec_path], timeout=job["timeout"],
                            memory=job["memory"], stdout=logf, stderr=subprocess.STDOUT, env=job["env"],
                            cwd=out_dir)
        status, wall, peak, exitcode = r.status, r.wall_s, r.peak_rss, r.returncode
    else:
        proc = _fork_context().Process(target=_forked_worker, args=(spec_path, log_path, job["env"]))
        proc.start()
        status, wall, peak = watch(proc.pid, lambda: not proc.is_alive(), timeout=job["timeout"],
                                   memory=job["memory"])
        proc.join()
        exitcode = proc.exitcode
    run = {"status": status, "returncode": exitcode, "wall_s": wall, "peak_rss": peak}
    result_path = os.path.join(out_dir, "result.json")
    result = None
    if status == "exited" and os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
    files: dict[str, dict[str, str]] = {}
    for kind in ("autograded", "feedback"):
        folder = os.path.join(out_dir, kind)
        if os.path.isdir(folder):
            files[kind] = {}
            for name in sorted(os.listdir(folder)):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    files[kind][name] = f.read()
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - _LOG_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        text = ""
    return {"student": job["student"], "hash": job["hash"], "run": run, "result": result, "files": files, "log": text}


def _log_tail(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-300:]


# "ValueError: ...", or the interpreter's "python: Error while finding module specification
# for 'ftlib.grading._kernel' (ModuleNotFoundError: No module named 'ftlib')".
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$"
                             r"|\(([A-Za-z_][\w.]*Error): (.+)\)$")
_KERNEL_DIED = ("Kernel died before replying to kernel_info", "Kernel didn't respond", "kernel died before")


def underlying_error(log_text: str) -> str:
    """The error behind a failed worker, from its log, in words; ``""`` if none is recognised.

    A kernel that dies while starting is reported with the exception it printed before
    (``the grading kernel could not start: ModuleNotFoundError: No module named 'ftlib'``);
    otherwise the last exception line of the log.
    """
    lines = [ln.strip() for ln in log_text.splitlines()]
    errors = []
    for i, ln in enumerate(lines):
        m = _EXCEPTION_LINE.search(ln)
        if m:
            name, text = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            errors.append((i, f"{name}: {text}"))
    died = next((i for i, ln in enumerate(lines) if any(k in ln for k in _KERNEL_DIED)), None)
    if died is not None:
        before = [ln for i, ln in errors if i < died]
        return "the grading kernel could not start" + (f": {before[-1]}" if before else "")
    return errors[-1][1] if errors else ""


def _row(student: str, assignment: str, info: dict, outcome: dict[str, Any] | None,
         status: str, message: str) -> dict[str, Any]:
    multi = len(info["notebooks"]) > 1
    row: dict[str, Any] = {"student": student, "assignment": assignment}
    total = max_total = 0.0
    scores = {}
    if outcome:
        for nb, res in outcome["notebooks"].items():
            for g in res["grades"]:
                scores[(nb, g["grade_id"])] = g["score"]
    by_hand = []
    for nb, nbinfo in info["notebooks"].items():
        for gid in nbinfo["grade_cells"]:
            key = f"{nb}:{gid}" if multi else gid
            max_total += nbinfo["max_scores"][gid]
            if (nb, gid) in scores and scores[(nb, gid)] is None:  # a written answer: nbgrader's formgrader
                row[key] = ""
                by_hand.append(f"{key} ({nbinfo['max_scores'][gid]:g})")
                continue
            score = scores.get((nb, gid), 0.0) or 0.0
            row[key] = score
            total += score
    if by_hand:
        note = f"to grade by hand: {', '.join(by_hand)}"
        message = f"{message}; {note}" if message else note
    row.update(total=total, max_total=max_total, status=status, message=message)
    return row


def _write_gradebook(gb, assignment: str, student: str, outcome: dict | None, info: dict, failed: bool) -> None:
    """Store one student's auto scores and comments in the open gradebook ``gb`` and commit."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbgrader's own SQLAlchemy session warnings
        try:
            _store(gb, assignment, student, outcome, info, failed)
        except BaseException:
            gb.db.rollback()  # the batch's one session must stay usable for the next student
            raise


def _store(gb, assignment: str, student: str, outcome: dict | None, info: dict, failed: bool) -> None:
    gb.update_or_create_student(student)
    kwargs = {"timestamp": outcome["timestamp"]} if outcome and outcome.get("timestamp") else {}
    gb.update_or_create_submission(assignment, student, **kwargs)
    for nb, nbinfo in info["notebooks"].items():
        res = (outcome or {}).get("notebooks", {}).get(nb, {})
        scores = {g["grade_id"]: g["score"] for g in res.get("grades", [])}
        for gid in nbinfo["grade_cells"]:
            grade = gb.find_grade(gid, nb, assignment, student)
            grade.auto_score = 0.0 if failed else scores.get(gid, 0.0)
            grade.needs_manual_grade = failed or grade.manual_score is not None or grade.auto_score is None
        for cid, text in res.get("comments", {}).items():
            comment = gb.find_comment(cid, nb, assignment, student)
            comment.auto_comment = text
        if res:
            snb = gb.find_submission_notebook(nb, assignment, student)
            snb.late_submission_penalty = res.get("late_penalty") or None
    gb.db.commit()


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_env(workers: int) -> dict[str, str]:
    """The environment of a grading worker on this machine, one of ``workers`` at once here."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(_with_venv_path(dict(os.environ)), PYTHONPATH=os.pathsep.join(
        [pkg_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.update(TQDM_MININTERVAL="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(_thread_limits(workers, os.environ))
    return env


def _thread_limits(workers: int, environ) -> dict[str, str]:
    """Thread counts for each kernel so that ``workers`` kernels share the cores.

    PyTorch and the BLAS libraries start one thread per core in every kernel; with two
    workers on two cores that is four busy threads fighting for two cores. Each kernel
    gets ``cores // workers`` threads (at least 1) unless the instructor set a value.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores // max(1, workers)))
    return {name: environ.get(name, threads) for name in THREAD_VARIABLES}


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
        _start_fork_server()  # it imports nbgrader on the other core while this process does the same
    coursedir, cfg = _load_coursedir(course_dir)
    if cell_timeout is None:
        cell_timeout = int(cfg.Execute.get("timeout", 30) or 30)
    if cell_timeout <= 0:
        raise ValueError(f"The 'cell_timeout' must be a positive number of seconds, got {cell_timeout!r}.")
    workers = workers or default_workers(memory)
    sandboxed = False
    if use_sandbox and scheduler is not None:
        sandboxed = True  # each worker checks its own, and refuses to grade without one
    elif use_sandbox:
        sandboxed, why = sandbox.available()
        if not sandboxed:
            log("!" * 78)
            log(f"WARNING: NO SANDBOX: {why}.")
            log("Learner code will run as this user WITH network access and can read the solutions,")
            log("the hidden tests and the gradebook. Only timeouts and memory limits apply.")
            log("!" * 78)
    else:
        log("WARNING: sandbox disabled (--no-sandbox): learner code can read solutions and use the network.")

    submitted_root = coursedir.format_path(coursedir.submitted_directory, ".", ".")
    source_dir = coursedir.format_path(coursedir.source_directory, ".", assignment)
    autograded_root = coursedir.format_path(coursedir.autograded_directory, ".", ".")
    feedback_root = coursedir.format_path(coursedir.feedback_directory, ".", ".")
    csv_path = csv_path or os.path.join(course_dir, "grades", f"{assignment}.csv")
    state_path = os.path.join(autograded_root, f".ftlib-grade-{assignment}.json")
    db_file = coursedir.db_url[len("sqlite:///"):] if coursedir.db_url.startswith("sqlite:///") else None
    hide = [os.path.join(course_dir, d) for d in (coursedir.source_directory, coursedir.submitted_directory,
                                                  coursedir.autograded_directory, coursedir.feedback_directory,
                                                  ".git", "grades")]
    hide += [p for p in (db_file, os.path.dirname(os.path.abspath(csv_path))) if p]

    work = tempfile.mkdtemp(prefix="ftlib-grade-")
    try:
        template = os.path.join(work, "template.db")
        info = _build_template(coursedir.db_url, coursedir.course_id, assignment, template)
        watched = _watched(course_dir, coursedir, assignment, info)
        delimiters = list(hidden_delimiters(cfg))  # the course's, as nbgrader hid them at release
        # Besides the submission, a grade depends on these: the assignment in the gradebook
        # (grade cells, points, hidden tests), the source folder (notebook, checks module,
        # data), ftlib's code and the options.
        options = json.dumps([cell_timeout, memory, include_hidden, max_output_bytes, delimiters, _STATE_VERSION,
                              info["fingerprint"], _hash_dir(source_dir), _hash_dir(_CODE_ROOT)])
        state = {}
        if os.path.exists(state_path):
            try:
                with open(state_path, encoding="utf-8") as f:
                    state = json.load(f)
            except (OSError, ValueError):
                state = {}
        present = sorted(s for s in os.listdir(submitted_root)
                         if os.path.isdir(os.path.join(submitted_root, s, assignment))) \
            if os.path.isdir(submitted_root) else []
        everyone = sorted(set(present) | set(info["students"]))
        if students:
            unknown = sorted(set(students) - set(everyone))
            if unknown:
                raise ValueError(f"No submission or gradebook entry for student(s) {', '.join(unknown)} "
                                 f"in {assignment!r}.")
            everyone = [s for s in everyone if s in students]
        env = worker_env(workers)
        rows, jobs = {}, []
        for student in everyone:
            sub = os.path.join(submitted_root, student, assignment)
            if not os.path.isdir(sub):
                rows[student] = _row(student, assignment, info, None, "missing", "no submission")
                continue
            present_nbs = sorted(n for n in os.listdir(sub) if n.endswith(".ipynb"))
            if not any(f"{name}.ipynb" in present_nbs for name in info["notebooks"]):
                hint = f"; found {', '.join(present_nbs)} instead (misnamed?)" if present_nbs else ""
                rows[student] = _row(student, assignment, info, None, "missing", f"no expected notebook{hint}")
                continue
            digest = hashlib.sha256(f"{_hash_dir(sub)}{options}".encode()).hexdigest()
            previous = state.get(student)
            if not force and previous and previous.get("hash") == digest:
                rows[student] = previous["row"]
                continue
            # Named by number, not by student id: ids can be long, and the kernel's sockets live here.
            out_dir = os.path.join(work, str(len(jobs)))
            os.makedirs(out_dir)
            spec = {"assignment": assignment, "student": student, "submission_dir": sub,
                    "template_db": template, "support_dir": source_dir, "notebooks": sorted(info["notebooks"]),
                    "cell_timeout": cell_timeout, "max_output_bytes": max_output_bytes,
                    "watched_modules": watched, "sandbox": sandboxed, "hide": hide,
                    "include_hidden": include_hidden, "hidden_delimiters": delimiters,
                    "output_dir": out_dir, "tmp_root": out_dir}
            jobs.append({"student": student, "spec": spec, "timeout": timeout, "memory": memory, "env": env,
                         "hash": digest, "sub": sub})
        skipped = len(everyone) - len(jobs) - sum(1 for r in rows.values() if r["status"] == "missing")
        where = (f"on a local Dask cluster of {workers} worker(s)" if scheduler == "local"
                 else f"on the Dask cluster at {scheduler}" if scheduler else f"with {workers} worker(s)")
        log(f"Grading {len(jobs)} submission(s) of {assignment} {where}"
            f"{f'; {skipped} unchanged, not graded again (use --force)' if skipped > 0 else ''}.")
        started = time.monotonic()
        from nbgrader.api import Gradebook

        # One connection for the whole batch: opening nbgrader's Gradebook costs 0.15 s of CPU.
        with Gradebook(coursedir.db_url, coursedir.course_id) as gb:
            recorder = _Recorder(gb, assignment=assignment, info=info, course_dir=course_dir,
                                 roots={"autograded": autograded_root, "feedback": feedback_root},
                                 logs_dir=os.path.join(course_dir, "grades", "logs", assignment),
                                 timeout=timeout, memory=memory, rows=rows, state=state, log=log)
            if scheduler is not None and jobs:
                from ftlib.grading.cluster import grade_on_cluster

                for done in grade_on_cluster(jobs, scheduler=scheduler, workers=workers, template_db=template,
                                             support_dir=source_dir, use_sandbox=use_sandbox, log=log):
                    recorder.record(done)
            else:
                with cf.ThreadPoolExecutor(max_workers=workers) as pool:
                    for future in cf.as_completed([pool.submit(_grade_one, job) for job in jobs]):
                        recorder.record(future.result())
            recorder.summarize()
        log(f"Graded {len(jobs)} submission(s) in {time.monotonic() - started:.1f} s.")
        _write_atomic(state_path, json.dumps(state, indent=1))
        ordered = [rows[s] for s in sorted(rows)]
        # Grading a subset updates its rows; everyone else's stay as the last run wrote them.
        others = _read_csv(csv_path, exclude=rows) if students else []
        _write_csv(csv_path, sorted(ordered + others, key=lambda r: r["student"]), info)
        log(f"Wrote {csv_path}")
        return ordered
    finally:
        shutil.rmtree(work, ignore_errors=True)  # failed submissions' logs are under grades/logs/


_KEEP_LOG = ("crashed", "timeout", "memory")


def _no_notebook() -> str:
    from ftlib.grading.autograde import NO_NOTEBOOK  # imported already: the batch loaded nbgrader

    return NO_NOTEBOOK
_ANNOUNCE_AFTER = 3  # submissions failing the same way before the batch says so


class _Recorder:
    """Store each graded submission as it arrives: only this process writes the course's files.

    One per batch: it holds the gradebook session, the CSV rows and re-grade state being
    built, and the failures seen so far, so that an error shared by many submissions (a
    broken environment, not the learners) is named once instead of in every row.
    """

    def __init__(self, gb, *, assignment: str, info: dict, course_dir: str, roots: dict[str, str],
                 logs_dir: str, timeout: float, memory: int | None, rows: dict, state: dict, log) -> None:
        self.gb, self.assignment, self.info, self.course_dir = gb, assignment, info, course_dir
        self.roots, self.logs_dir, self.timeout, self.memory = roots, logs_dir, timeout, memory
        self.rows, self.state, self.log = rows, state, log
        self.failures: dict[str, list[str]] = {}
        self.announced: set[str] = set()

    def record(self, done: dict[str, Any]) -> None:
        student, run, outcome = done["student"], done["run"], done["result"]
        assignment = self.assignment
        cause, grader_failed = "", outcome is None and run["status"] == "exited"
        if run["status"] == "memory":
            status, message = "memory", f"killed: used more than {self.memory / 2**20:.0f} MiB"
        elif run["status"] == "timeout":
            status, message = "timeout", f"killed: ran longer than {self.timeout:g} s"
        elif outcome is None:
            status, cause = "crashed", underlying_error(done["log"])
            message = f"the grading worker failed (exit {run['returncode']}): {cause or _log_tail(done['log'])}"
        else:
            nbres = outcome["notebooks"].values()
            status = max((r["status"] for r in nbres), key=lambda s: _SEVERITY.get(s, 0), default="ok")
            grader_failed = any(r["message"] == _no_notebook() for r in nbres)
            if grader_failed:
                cause = underlying_error(done["log"])
            message = "; ".join(
                f"{nb}: {self._explained(r['message'], cause)}" if len(outcome["notebooks"]) > 1
                else self._explained(r["message"], cause)
                for nb, r in outcome["notebooks"].items() if r["message"])
        log_path = os.path.join(self.logs_dir, f"{student}.log")
        if status in _KEEP_LOG:
            os.makedirs(self.logs_dir, exist_ok=True)
            with open(log_path, "w", encoding="utf-8") as f:
                f.write(done["log"])
            message += f"; log: {os.path.relpath(log_path, self.course_dir)}"
        elif os.path.exists(log_path):
            os.remove(log_path)  # the log of an earlier failure, now graded
        failed = outcome is None
        stored = True
        try:
            _write_gradebook(self.gb, assignment, student, outcome, self.info, failed)
        except Exception as e:  # a locked or broken database: keep grading, retry next run
            stored = False
            message = (f"{message}; " if message else "") + \
                f"NOT stored in the gradebook ({type(e).__name__}: {e}); run again to retry"
        for kind, files in done["files"].items():
            dst = os.path.join(self.roots[kind], student, assignment)
            os.makedirs(dst, exist_ok=True)
            for name, text in files.items():
                with open(os.path.join(dst, name), "w", encoding="utf-8") as f:
                    f.write(text)
        row = _row(student, assignment, self.info, outcome, status, message)
        self.rows[student] = row
        if stored and not grader_failed:
            self.state[student] = {"hash": done["hash"], "row": row}  # a grader failure is retried next time
        shown = row["message"]
        if cause and status == "crashed":
            self.failures.setdefault(cause, []).append(student)
            if cause in self.announced:
                shown = f"the same failure as above; log: {os.path.relpath(log_path, self.course_dir)}"
            elif len(self.failures[cause]) >= _ANNOUNCE_AFTER:
                self._announce(cause, "so far")
        self.log(f"  {student:<20} {row['total']:>6g} / {row['max_total']:g}  {status}"
                 f"{'  ' + shown if shown else ''}  ({run['wall_s']:.1f} s, {run['peak_rss'] / 2**20:.0f} MiB)")

    @staticmethod
    def _explained(message: str, cause: str) -> str:
        return f"{message}: {cause}" if cause and message == _no_notebook() else message

    def _announce(self, cause: str, when: str) -> None:
        self.announced.add(cause)
        logs = os.path.relpath(self.logs_dir, self.course_dir)
        self.log("!" * 78)
        self.log(f"{len(self.failures[cause])} submission(s) {when} failed the same way: {cause}")
        self.log(f"That is the grading environment, not the learners' code; logs in {logs}{os.sep}.")
        self.log("!" * 78)

    def summarize(self) -> None:
        """Name, once, every error that two or more submissions of the batch failed with."""
        for cause, students in self.failures.items():
            if len(students) >= 2 and cause not in self.announced:
                self._announce(cause, "in all")
            elif cause in self.announced:
                self.log(f"{len(students)} submission(s) in all failed with: {cause}")


def _write_atomic(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: an interrupted run leaves the old file whole."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ftlib-", dir=folder)
    try:
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _read_csv(path: str, exclude) -> list[dict[str, Any]]:
    """The rows of an earlier CSV at ``path`` whose student is not in ``exclude``."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [r for r in csv.DictReader(f) if r.get("student") and r["student"] not in exclude]
    except FileNotFoundError:
        return []


def _write_csv(path: str, rows: list[dict[str, Any]], info: dict) -> None:
    import io

    multi = len(info["notebooks"]) > 1
    cells = [f"{nb}:{g}" if multi else g for nb, i in info["notebooks"].items() for g in i["grade_cells"]]
    fields = ["student", "assignment", *cells, "total", "max_total", "status", "message"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, buf.getvalue())


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
