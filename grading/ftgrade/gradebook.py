"""nbgrader's side of `ftlib grade`: the course directory, the template gradebook, the stored scores.

Each worker grades against a small template gradebook holding only the assignment
(:func:`build_template`), never the course's; only the grading process writes the
course's gradebook (:func:`write_gradebook`), one student at a time.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from typing import Any

__all__ = ["load_coursedir", "with_venv_path", "build_template", "write_gradebook"]


def load_coursedir(course_dir: str):
    import ftgrade.autograde  # noqa: F401 (its import-time speed-up for jsonschema)
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    cfg = Config()
    if os.path.isfile(os.path.join(course_dir, "nbgrader_config.py")):
        cfg.merge(PyFileConfigLoader("nbgrader_config.py", path=course_dir).load_config())
    cfg.CourseDirectory.root = os.path.abspath(course_dir)
    return CourseDirectory(config=cfg), cfg


def with_venv_path(env: dict[str, str]) -> dict[str, str]:
    # nbgrader runs the `alembic` executable when it creates a gradebook; use the one next to
    # this interpreter even when the virtualenv is not activated (as under `make test`).
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        env = dict(env, PATH=bindir + os.pathsep + path)
    return env


def build_template(db_url: str, course_id: str, assignment: str, path: str) -> dict[str, Any]:
    """Copy ``assignment`` (cells, points, source with hidden tests) into a fresh gradebook."""
    from nbgrader.api import Gradebook

    os.environ.update(with_venv_path(dict(os.environ)))
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
        solutions = {c.name for c in nb.solution_cells}
        info["notebooks"][nb.name] = {
            "grade_cells": [c.name for c in sorted(nb.grade_cells, key=lambda c: c.id)],
            "max_scores": {c.name: c.max_score for c in nb.grade_cells},
            "sources": [c.source for c in nb.source_cells],
            # every cell id the assignment knows, and what its solution cells define (the exercises)
            "cell_ids": sorted({c.name for c in (*nb.source_cells, *nb.grade_cells, *nb.solution_cells,
                                                 *nb.task_cells)}),
            "exercises": sorted({name for c in nb.source_cells if c.name in solutions
                                 for name in _defined_names(c.source)}),
            # what each cell is, as the release made it (a learner can edit cell metadata)
            "kinds": _kinds(nb),
            # the autograder tests' source, hidden tests included: what the judge runs
            "tests": {c.name: c.source for c in nb.source_cells
                      if c.name in {g.name for g in nb.grade_cells if g.cell_type == "code"} - solutions},
        }
    info["fingerprint"] = fingerprint.hexdigest()
    return info


def _kinds(nb) -> dict[str, dict]:
    """Each cell id of notebook ``nb`` -> its nbgrader flags as the gradebook records them."""
    points = {c.name: float(c.max_score) for c in nb.grade_cells}
    points.update({c.name: float(c.max_score) for c in nb.task_cells})
    grades, solutions, tasks = ({c.name for c in cells} for cells in (nb.grade_cells, nb.solution_cells, nb.task_cells))
    kinds = {}
    for c in nb.source_cells:
        kind = {"grade": c.name in grades, "solution": c.name in solutions, "locked": bool(c.locked)}
        if c.name in tasks:
            kind["task"] = True
        if c.name in points:
            kind["points"] = points[c.name]
        kinds[c.name] = kind
    return kinds


def _defined_names(source: str) -> list[str]:
    """The functions and classes a cell defines at its top level."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def write_gradebook(gb, assignment: str, student: str, outcome: dict | None, info: dict, failed: bool) -> None:
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
