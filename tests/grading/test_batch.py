"""The pieces that make a batch cheap must not change what it records.

`ftlib grade` builds the per-worker gradebook without nbgrader's ``alembic`` subprocess,
writes the whole batch through one gradebook session, forks workers from a warmed fork
server and lets nbgrader's many `Gradebook` objects in a worker share one engine.
The graded batch in `test_grade` checks the scores; these check each piece's contract.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

import helpers


def _alembic_version(path: str) -> str:
    with sqlite3.connect(path) as con:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_template_gets_the_course_schema_version_without_alembic(course, tmp_path, monkeypatch):
    from nbgrader import api

    from ftgrade.gradebook import build_template, load_coursedir

    def no_subprocess():
        raise AssertionError("nbgrader ran `alembic heads` to stamp the template")

    monkeypatch.setattr(api, "get_alembic_version", no_subprocess)
    root, _ = course
    coursedir, _ = load_coursedir(root)
    template = str(tmp_path / "template.db")
    info = build_template(coursedir.db_url, coursedir.course_id, helpers.ASSIGNMENT, template)

    assert _alembic_version(template) == _alembic_version(os.path.join(root, "gradebook.db"))
    assert set(info["notebooks"]) == {helpers.ASSIGNMENT}
    with api.Gradebook(f"sqlite:///{template}") as tpl:
        cells = {c.name: c.max_score for c in tpl.find_notebook(helpers.ASSIGNMENT, helpers.ASSIGNMENT).grade_cells}
    assert cells == info["notebooks"][helpers.ASSIGNMENT]["max_scores"]
    assert sum(cells.values()) == 6


def test_a_failed_gradebook_write_leaves_the_session_usable(course, tmp_path):
    from nbgrader.api import Gradebook, MissingEntry

    from ftgrade.gradebook import build_template, load_coursedir, write_gradebook

    root, _ = course
    coursedir, _ = load_coursedir(root)
    info = build_template(coursedir.db_url, coursedir.course_id, helpers.ASSIGNMENT, str(tmp_path / "t.db"))
    shutil.copy(os.path.join(root, "gradebook.db"), tmp_path / "gradebook.db")  # leave the shared course alone
    nb = helpers.ASSIGNMENT
    grades = [{"grade_id": gid, "score": 1.0} for gid in info["notebooks"][nb]["grade_cells"]]
    outcome = {"notebooks": {nb: {"grades": grades, "comments": {}, "late_penalty": 0.0}}, "timestamp": None}
    broken = dict(info, notebooks={"not_a_notebook": info["notebooks"][nb]})

    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}", coursedir.course_id) as gb:
        with pytest.raises(MissingEntry):
            write_gradebook(gb, helpers.ASSIGNMENT, "mallory", outcome, broken, failed=False)
        write_gradebook(gb, helpers.ASSIGNMENT, "alice", outcome, info, failed=False)

    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}", coursedir.course_id) as gb:
        stored = {g.name: g.auto_score for g in gb.find_submission_notebook(nb, helpers.ASSIGNMENT, "alice").grades}
    assert stored == {g["grade_id"]: 1.0 for g in grades}


def test_gradebooks_in_a_worker_share_one_engine_per_database(tmp_path):
    import sqlalchemy
    from nbgrader import api

    from ftgrade.autograde import _one_engine_per_database

    with _one_engine_per_database():
        a = api.create_engine(f"sqlite:///{tmp_path / 'a.db'}", future=True)
        assert api.create_engine(f"sqlite:///{tmp_path / 'a.db'}", future=True) is a
        assert api.create_engine(f"sqlite:///{tmp_path / 'b.db'}", future=True) is not a
    assert api.create_engine is sqlalchemy.create_engine  # nbgrader is left as it was


def test_the_fork_server_preload_warms_nbgrader_and_starts_no_thread():
    # Forking a process that runs threads can deadlock the child, so the warm-up must not start any.
    code = ("import sys, threading; import ftgrade._preload; "
            "from nbgrader.api import Grade; "
            "print(threading.active_count(), 'IPython' in sys.modules, Grade.__mapper__.configured)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["1", "True", "True"]


def test_a_gradebook_that_refuses_a_write_does_not_stop_the_batch(tmp_path, monkeypatch):
    from ftgrade import grade, gradebook

    root = str(tmp_path / "course")
    os.makedirs(root)
    release = helpers.make_course(root)
    ref = helpers.write_submission(root, "ref", release)
    for student in ("alice", "bob"):
        shutil.copytree(ref, os.path.join(root, "submitted", student, helpers.ASSIGNMENT))
    shutil.rmtree(os.path.dirname(ref))
    real = gradebook._store

    def locked_for_bob(gb, assignment, student, *args):
        if student == "bob":
            raise RuntimeError("database is locked")
        return real(gb, assignment, student, *args)

    monkeypatch.setattr(gradebook, "_store", locked_for_bob)
    rows = {r["student"]: r for r in grade.grade_assignment(
        helpers.ASSIGNMENT, course_dir=root, workers=2, timeout=60, cell_timeout=5, log=lambda line: None)}
    assert rows["alice"]["total"] == rows["bob"]["total"] == 6
    assert "NOT stored in the gradebook (RuntimeError: database is locked)" in rows["bob"]["message"]
    assert rows["alice"]["message"] == ""

    # Only bob is graded again on the next run: his scores never reached the gradebook.
    monkeypatch.setattr(gradebook, "_store", real)
    lines = []
    grade.grade_assignment(helpers.ASSIGNMENT, course_dir=root, workers=2, timeout=60, cell_timeout=5,
                           log=lines.append)
    assert any("Grading 1 submission(s)" in line for line in lines), lines


def test_the_grading_kernel_is_ipykernel_without_the_debugger(tmp_path, monkeypatch):
    import asyncio

    from jupyter_client.manager import AsyncKernelManager

    from ftgrade.autograde import SandboxKernelManager, _grading_kernel

    assert _grading_kernel(["py", "-m", "ipykernel_launcher", "-f", "c.json"]) == \
        ["py", "-m", "ftgrade._kernel", "-f", "c.json"]
    assert _grading_kernel(["R", "--slave", "-e", "IRkernel::main()"]) == ["R", "--slave", "-e", "IRkernel::main()"]
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))

    async def probe(manager_class) -> str:
        km = manager_class(kernel_name="python3")
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        out = []
        try:
            await kc.wait_for_ready(timeout=60)
            await kc.execute_interactive("import sys; print(repr(sys.modules.get('debugpy'))); print(sys.path)",
                                         output_hook=lambda m: out.append(m["content"].get("text", "")),
                                         timeout=60)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
        return "".join(out).splitlines()

    graded, stock = asyncio.run(probe(SandboxKernelManager)), asyncio.run(probe(AsyncKernelManager))
    assert graded[0] == "None", graded
    assert stock[0] != "None"  # the stock kernel here does load debugpy
    assert graded[1] == stock[1]  # the same sys.path: the learner's imports resolve alike


def test_a_written_answer_is_left_for_a_person_not_scored_zero():
    from ftgrade.feedback import render_feedback
    from ftgrade.results import csv_row

    info = {"notebooks": {"nb": {"grade_cells": ["code_test", "essay"], "max_scores": {"code_test": 2, "essay": 3}}}}
    grades = [{"grade_id": "code_test", "score": 2.0, "max_score": 2, "message": ""},
              {"grade_id": "essay", "score": None, "max_score": 3, "message": ""}]
    row = csv_row("ann", "a1", info, {"notebooks": {"nb": {"grades": grades}}}, "ok", "")
    assert (row["code_test"], row["essay"], row["total"], row["max_total"]) == (2.0, "", 2.0, 5.0)
    assert row["message"] == "to grade by hand: essay (3)"
    assert csv_row("bob", "a1", info, None, "missing", "no submission")["essay"] == 0.0  # nothing to grade

    page = render_feedback({"cells": []}, grades, student="ann", assignment="a1", notebook="nb", status="ok")
    assert "<td>? / 3</td><td class=''>graded by hand</td>" in page
    assert "2 / 5</b> (3 of them to be graded by your instructor)" in page
    assert "fail" not in page.split("<table>")[1]
