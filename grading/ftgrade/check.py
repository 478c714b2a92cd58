"""`ftlib check NOTEBOOK`: a learner's quick, trustworthy self-check of one notebook.

Loads only the learner's solution cells and setup cells (imports and definitions) into a
fresh Python process, never the learner's kernel and never the other cells (training,
plots), then runs each grade cell on its own with a time limit and prints one row per
grade cell: exercise, points, pass/fail and the exception's message. The grade cells
come from the released course notebook when it can be found, so editing a grade cell in
one's own copy cannot change the verdict. Output on stderr (warnings, tqdm bars) never
counts as a failure; only an exception does. Hidden tests are not in the released
notebooks, so `check` cannot run them: passing here is necessary, not sufficient.

Exit status: 0 when every check passed, 1 when one failed, 2 when the notebook could
not be checked at all.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from ftgrade import guard, warm
from ftgrade.limits import parse_memory, run_limited
from ftgrade.notebook import (
    NotebookError,
    Cell,
    duplicate_grade_ids,
    grade_cells,
    imported_modules,
    is_setup_source,
    read_notebook,
    setup_cells,
    solution_cells,
)

__all__ = ["check_main", "check_notebook", "find_release_notebook", "format_table", "format_failures"]

CONFIG_FILE = "nbgrader_config.py"
DEFAULT_RELEASE_DIR = "course"


def _course_root(start: str) -> str | None:
    d = os.path.abspath(start)
    while True:
        if os.path.isfile(os.path.join(d, CONFIG_FILE)):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _release_dir_from_config(root: str) -> str:
    try:
        from traitlets.config.loader import PyFileConfigLoader

        cfg = PyFileConfigLoader(CONFIG_FILE, path=root).load_config()
        name = cfg.CourseDirectory.get("release_directory", DEFAULT_RELEASE_DIR)
    except Exception:  # a broken config must not stop a learner's check
        name = DEFAULT_RELEASE_DIR
    return os.path.join(root, str(name))


def _git_head_version(root: str, path: str) -> dict[str, Any] | None:
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
    try:
        r = subprocess.run(["git", "-C", root, "show", f"HEAD:{rel}"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    with tempfile.NamedTemporaryFile("wb", suffix=".ipynb", delete=False) as f:
        f.write(r.stdout)
    try:
        return read_notebook(f.name)
    except NotebookError:
        return None
    finally:
        os.unlink(f.name)


def find_release_notebook(path: str, *, release_dir: str | None = None) -> tuple[dict | None, str]:
    """Find the released (unedited) version of the learner notebook at ``path``.

    Looks for ``<release_dir>/<assignment>/<name>.ipynb`` where ``<assignment>`` is the
    notebook's folder name, then for a unique ``<release_dir>/*/<name>.ipynb``. The
    release directory defaults to the course's ``CourseDirectory.release_directory``,
    found from the ``nbgrader_config.py`` above the notebook. When that file *is* the
    learner's notebook (learners work in ``course/`` itself), the version committed at
    git ``HEAD`` is used instead.

    Returns
    -------
    (dict or None, str)
        The notebook and where it came from, or None and why nothing was found.
    """
    root = _course_root(os.path.dirname(os.path.abspath(path)))
    if release_dir is None:
        if root is None:
            return None, f"no {CONFIG_FILE} found above {path!r}"
        release_dir = _release_dir_from_config(root)
    name = os.path.basename(path)
    assignment = os.path.basename(os.path.dirname(os.path.abspath(path)))
    candidate = os.path.join(release_dir, assignment, name)
    if not os.path.isfile(candidate) and os.path.isdir(release_dir):
        matches = [os.path.join(release_dir, d, name) for d in sorted(os.listdir(release_dir))
                   if os.path.isfile(os.path.join(release_dir, d, name))]
        if len(matches) == 1:
            candidate = matches[0]
    if not os.path.isfile(candidate):
        return None, f"no {name} under {release_dir!r}"
    if os.path.realpath(candidate) == os.path.realpath(path):
        nb = _git_head_version(root, path) if root else None
        if nb is not None:
            return nb, f"{os.path.relpath(candidate, root)} at git HEAD"
        return None, "your notebook is the course copy itself and git has no committed version of it"
    try:
        return read_notebook(candidate), candidate
    except NotebookError as e:
        return None, str(e)


def _select(cells: list[Cell], exercise: str | None) -> list[Cell]:
    if exercise is None:
        return cells
    exact = [c for c in cells if c.grade_id == exercise]
    if exact:
        return exact
    prefixes = (f"test_{exercise}", exercise)
    picked = [c for c in cells if c.grade_id.startswith(prefixes)]
    if not picked:
        names = ", ".join(c.grade_id for c in cells) or "none"
        raise ValueError(
            f"The --exercise {exercise!r} matches no grade cell. Grade cells in this notebook: {names}."
        )
    return picked


def check_notebook(path: str, *, exercise: str | None = None, timeout: float = 60.0,
                   release_dir: str | None = None, memory: int | None = None,
                   show_output: bool = False, warm_start: bool | None = None) -> dict[str, Any]:
    """Check one notebook in a fresh process and return the results as data.

    Parameters
    ----------
    path : str
        The learner's notebook.
    exercise : str, optional
        Only run the grade cell with this grade_id, or those starting with
        ``test_<exercise>`` or ``<exercise>``.
    timeout : float
        Seconds allowed to each grade cell and to each loaded cell.
    release_dir : str, optional
        The released course directory (default: found from ``nbgrader_config.py``).
    memory : int, optional
        Bytes of memory allowed to the checking process tree.
    show_output : bool
        Let the learner code's stdout/stderr through to this process's stderr.
    warm_start : bool, optional
        Run in a process forked by a warm server that has the libraries imported, and
        start one for the next check if none answers (see `ftgrade.warm`).
        Default: `warm.enabled` (on, except in CI, under ``memory``, with
        ``FTLIB_CHECK_WARM=0`` or where memory is short).

    Returns
    -------
    dict
        ``results`` (one dict per grade cell: grade_id, points, status, message),
        ``load_errors``, ``warnings``, ``source`` (where the grade cells came from),
        ``process`` (how the checking process ended) and ``timings`` (seconds spent
        importing the checked modules, in each loaded cell and in each grade cell).

    Raises
    ------
    NotebookError
        If the notebook cannot be read.
    ValueError
        If ``exercise`` matches no grade cell or ``timeout`` is not positive.
    """
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"The 'timeout' must be a positive number of seconds, got {timeout!r}.")
    nb = read_notebook(path)
    warnings = []
    dup = duplicate_grade_ids(nb)
    if dup:
        warnings.append(f"grade ids used by several cells in your notebook: {', '.join(dup)}")
    release, where = find_release_notebook(path, release_dir=release_dir)
    if release is not None:
        graded = grade_cells(release)
        mine = {c.grade_id: c.source for c in grade_cells(nb)}
        edited = [c.grade_id for c in graded if c.grade_id in mine and mine[c.grade_id] != c.source]
        if edited:
            warnings.append(f"your copy of {', '.join(edited)} differs from the course; the course version was used")
        load_setup = setup_cells(release)
    else:
        warnings.append(f"could not find the course version of this notebook ({where}); "
                        "using the grade cells of your own notebook. Point at the course's release folder "
                        "(the one holding <assignment>/<notebook>.ipynb) with --release-dir PATH")
        graded, load_setup, where = grade_cells(nb), [], path
    graded = _select(graded, exercise)
    # A released grade cell whose tests were all hidden holds only a docstring and imports.
    hidden = [c for c in graded if not c.source.strip() or is_setup_source(c.source)]
    graded = [c for c in graded if c not in hidden]
    learner_cells = sorted(setup_cells(nb) + solution_cells(nb), key=lambda c: c.index)
    load = [{"kind": "course setup", "label": c.index, "source": c.source} for c in load_setup]
    load += [{"kind": c.kind, "label": c.grade_id or c.index, "source": c.source} for c in learner_cells]
    checking = [c.source for c in load_setup + graded + hidden]
    watched = guard.watched_for(imported_modules(checking))
    # `from ftlib.checks import modify_model`: the submodule must be watched (and loaded
    # once, before the forks) too; the runner keeps the names that are modules.
    maybe = [m for m in imported_modules(checking, from_names=True) if m not in watched]
    cwd = os.path.dirname(os.path.abspath(path))
    # Support files (the checks module, data) lie beside the released notebook.
    extra = [os.path.dirname(os.path.abspath(where))] if os.path.isfile(where) else []
    spec = {"load": load, "grade": [c._asdict() for c in graded], "timeout": timeout,
            "watched": watched, "maybe_modules": maybe, "cwd": cwd, "path": extra}
    with tempfile.TemporaryDirectory(prefix="ftlib-check-") as tmp:
        spec_path, results_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "results.jsonl")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [_package_root()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        env.setdefault("TQDM_DISABLE", "1")
        env.setdefault("MPLBACKEND", "Agg")
        sink = None if show_output else subprocess.DEVNULL
        limit = 30 + timeout * (len(load) + len(graded))
        server = warm.socket_path(env) if (warm_start if warm_start is not None else warm.enabled(memory)) else None
        run = None
        if server:
            run = warm.run(server, [spec_path, results_path], env=env, cwd=cwd, timeout=limit,
                           show_output=show_output)
        served = run is not None
        if run is None:
            if server:  # warm for the next check: it imports while this one does (2+ cores)
                warm.start(server, env)
            run = run_limited([sys.executable, "-m", "ftgrade._runner", spec_path, results_path],
                              timeout=limit, memory=memory, stdin=subprocess.DEVNULL, stdout=sink,
                              stderr=sink, env=env, cwd=cwd)
        events = []
        if os.path.exists(results_path):
            with open(results_path, encoding="utf-8") as f:
                events = [json.loads(line) for line in f if line.strip()]
    order = {c.grade_id: i for i, c in enumerate(sorted(graded + hidden, key=lambda c: c.index))}
    done = {e["grade_id"]: e for e in events if e["event"] == "grade"}
    if run.status == "memory":
        why = f"the check used more than {memory / 2**30:.1f} GiB of memory"
    elif run.status == "timeout":
        why = f"the check ran longer than {limit:g} s"
    else:
        why = f"the checking process ended early (exit code {run.returncode})"
    results = [done.get(c.grade_id) or {"grade_id": c.grade_id, "points": c.points, "status": "fail",
                                         "message": f"not run: {why}"} for c in graded]
    results += [{"grade_id": c.grade_id, "points": c.points, "status": "hidden",
                 "message": "tests hidden until grading"} for c in hidden]
    results.sort(key=lambda r: order[r["grade_id"]])
    load_errors = [e for e in events if e["event"] == "load" and e["status"] == "fail"]
    timings = [(e.get("label") or e.get("grade_id") or e["event"], e["seconds"]) for e in events if "seconds" in e]
    return {"results": results, "load_errors": load_errors, "warnings": warnings, "source": where,
            "process": {**run._asdict(), "warm": served}, "timings": timings}


def _package_root() -> str:
    # The directory holding the ftlib package, so the runner imports this very copy.
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def format_table(results: list[dict[str, Any]], *, width: int = 100) -> str:
    """Format check results as a plain-text table, one row per grade cell."""
    rows = [("exercise", "points", "result", "message")]
    for r in results:
        msg = " ".join(str(r.get("message", "")).split())
        verdict = {"pass": "pass", "hidden": "hidden"}.get(r["status"], "FAIL")
        rows.append((r["grade_id"], f"{r['points']:g}", verdict, msg))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    room = max(20, width - w0 - w1 - 12)
    lines = []
    for i, (a, b, c, d) in enumerate(rows):
        d = d if len(d) <= room else d[: room - 3] + "..."
        lines.append(f"{a:<{w0}}  {b:>{w1}}  {c:<6}  {d}".rstrip())
        if i == 0:
            lines.append("-" * min(width, len(lines[0]) + 20))
    return "\n".join(lines)


_SCREEN_LINES, _SCREEN_CHARS = 24, 2400  # at most one screen per failure


def format_failures(results: list[dict[str, Any]]) -> str:
    """The whole message of each failed check (what was expected, found, the hint), one screen at most."""
    blocks = []
    for r in results:
        if r["status"] in ("pass", "hidden"):
            continue
        text = str(r.get("message", "")).strip()
        lines = text.splitlines()
        shown = "\n".join(lines[:_SCREEN_LINES])
        if len(shown) > _SCREEN_CHARS:
            shown = shown[:_SCREEN_CHARS] + " ..."
        if len(lines) > _SCREEN_LINES or len(shown) < len(text):
            shown += f"\n... (cut; `--exercise {r['grade_id']}` runs this check alone)"
        blocks.append(f"\n{r['grade_id']} failed:\n" + "\n".join("  " + ln for ln in shown.splitlines()))
    return "\n".join(blocks)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ftlib check",
        description="Check your answers in NOTEBOOK against the course's tests, in a fresh process.",
    )
    p.add_argument("notebook", help="the .ipynb file to check")
    p.add_argument("--exercise", help="only run this grade cell (its grade_id, e.g. test_add, or an exercise name)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per cell (default: 60)")
    p.add_argument("--release-dir", help="the released course directory (default: from nbgrader_config.py)")
    p.add_argument("--memory", help="memory limit for the check, e.g. 4G (default: none)")
    p.add_argument("--show-output", action="store_true", help="show what your code prints")
    return p


def check_main(argv: list[str]) -> int:
    """Entry point of ``ftlib check``; returns the exit status (0 all passed, 1 failed, 2 error)."""
    args = _parser().parse_args(argv)
    try:
        report = check_notebook(args.notebook, exercise=args.exercise, timeout=args.timeout,
                                release_dir=args.release_dir, memory=parse_memory(args.memory),
                                show_output=args.show_output)
    except (NotebookError, ValueError) as e:
        print(f"ftlib check: {e}", file=sys.stderr)
        return 2
    for w in report["warnings"]:
        print(f"warning: {w}")
    for e in report["load_errors"]:
        print(f"error in your {e['label']}: {e['message']}")
    if not report["results"]:
        print("No grade cells to run in this notebook.")
        return 1
    print(format_table(report["results"]))
    details = format_failures(report["results"])
    if details:
        print(details)
    results = [r for r in report["results"] if r["status"] != "hidden"]
    passed = [r for r in results if r["status"] == "pass"]
    got = sum(r["points"] for r in passed)
    total = sum(r["points"] for r in results)
    print(f"\n{len(passed)}/{len(results)} checks passed ({got:g}/{total:g} points; hidden tests not included).")
    if report["load_errors"]:
        print("Some of your cells fail on their own (see above); grading runs them too, so fix them first.")
    return 0 if len(passed) == len(results) and not report["load_errors"] else 1


if __name__ == "__main__":
    sys.exit(check_main(sys.argv[1:]))
