"""`ftlib check` on the toy notebook: verdicts, exit codes, and what cannot fool it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import helpers
from ftgrade.check import check_main, check_notebook


def _learner(course, name, builder):
    """Write a learner's copy at <root>/work/<folder>/ps1.ipynb (beside, not in, course/)."""
    root, release = course
    path = os.path.join(root, "work", name, "ps1", "ps1.ipynb")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(builder(helpers.load(release)), f)
    return path


def test_reference_passes(course, capsys):
    path = _learner(course, "ref", helpers.reference)
    assert check_main([path, "--timeout", "10"]) == 0
    out = capsys.readouterr().out
    assert "test_add" in out and "pass" in out and "2/2 checks passed" in out
    assert "hidden" in out  # the released hidden-test cells are reported, not run


def test_stub_fails_with_the_message(course, capsys):
    path = _learner(course, "stub", lambda r: r)
    assert check_main([path, "--timeout", "10"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "NotImplementedError" in out


def test_exercise_selects_grade_cells(course):
    path = _learner(course, "half", helpers._with(add=helpers.ADD_OK, normalize="def normalize(xs):\n    raise NotImplementedError\n"))
    report = check_notebook(path, exercise="add", timeout=10)
    assert [r["grade_id"] for r in report["results"]] == ["test_add", "test_add_hidden"]
    assert report["results"][0]["status"] == "pass"
    assert check_main([path, "--exercise", "normalize", "--timeout", "10"]) == 1
    assert check_main([path, "--exercise", "nope"]) == 2


def test_stderr_noise_is_not_a_failure(course):
    path = _learner(course, "noisy", helpers._with(add=helpers.NOISY))
    assert check_main([path, "--timeout", "10"]) == 0


def test_edited_grade_cell_is_taken_from_the_course(course, capsys):
    path = _learner(course, "edited", helpers._edit(helpers._edit_test))
    assert check_main([path, "--timeout", "10"]) == 1
    out = capsys.readouterr().out
    assert "differs from the course" in out and "add(1, 2) returned -1.0" in out


def test_falls_back_to_own_grade_cells_with_a_warning(course, capsys):
    import shutil

    path = _learner(course, "elsewhere", helpers.reference)
    renamed = os.path.join(os.path.dirname(path), "my_copy.ipynb")
    os.rename(path, renamed)
    shutil.copy(os.path.join(helpers.FIXTURES, "ps1", "ps1_checks.py"), os.path.dirname(path))
    path = renamed
    assert check_main([path, "--timeout", "10"]) == 0
    assert "could not find the course version" in capsys.readouterr().out


@pytest.mark.parametrize("name, builder, words", [
    ("loop", helpers._with(add="def add(a, b):\n    while True:\n        pass\n"), "timed out"),
    ("exit", helpers._with(add="def add(a, b):\n    import os\n    os._exit(1)\n"), "died"),
    ("patch", helpers.FAULTS["patch_numpy"][0], "Not equal to tolerance"),
    ("equal", helpers.FAULTS["always_equal"][0], "returned 42.0"),
    ("syntax", helpers.FAULTS["syntax"][0], "SyntaxError"),
])
def test_faults_fail_without_breaking_the_check(course, capsys, name, builder, words):
    path = _learner(course, name, builder)
    assert check_main([path, "--timeout", "3"]) == 1
    assert words in capsys.readouterr().out


def test_top_level_endless_loop_is_cut(course, capsys):
    path = _learner(course, "toploop", helpers._with(add=helpers.ADD_OK + "while True:\n    pass\n"))
    assert check_main([path, "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "took too long" in out and "test_add" in out


def test_unreadable_notebooks_exit_2(course, tmp_path, capsys):
    bad = tmp_path / "bad.ipynb"
    bad.write_text('{"cells": [')
    assert check_main([str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert check_main([str(tmp_path / "missing.ipynb")]) == 2
    assert check_main([str(tmp_path / "notes.txt")]) == 2


def test_module_entry_point_exit_codes(course):
    ok = _learner(course, "cli-ok", helpers.reference)
    stub = _learner(course, "cli-stub", lambda r: r)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    run = [sys.executable, "-m", "ftgrade.check"]
    assert subprocess.run(run + [ok, "--timeout", "10"], env=env, capture_output=True).returncode == 0
    r = subprocess.run(run + [stub, "--timeout", "10"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "NotImplementedError" in r.stdout


def test_a_checks_module_builds_its_prepared_state_once_before_the_grade_cells(tmp_path):
    # `PREPARE` names cached builders (09's trained tiny Llama): `ftlib check` calls them
    # once, before learner code, and every grade cell's fork inherits the result.
    import nbformat

    from ftgrade.check import check_notebook

    builds = tmp_path / "builds.txt"
    (tmp_path / "prepared_checks.py").write_text(
        "import functools\n"
        "PREPARE = ('shared',)\n"
        "@functools.lru_cache(maxsize=1)\n"
        "def shared():\n"
        f"    open({str(builds)!r}, 'a').write('built\\n')\n"
        "    return 42\n")
    grade = {"grade": True, "solution": False, "locked": True, "points": 1, "schema_version": 3}
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def answer():\n    return 42\n", metadata={"nbgrader": {
                    "grade": False, "solution": True, "locked": False, "grade_id": "answer", "schema_version": 3}})]
    for i in (1, 2):
        nb.cells.append(nbformat.v4.new_code_cell(
            "from prepared_checks import shared\nassert answer() == shared()\n",
            metadata={"nbgrader": {**grade, "grade_id": f"test_{i}"}}))
    path = tmp_path / "prepared.ipynb"
    nbformat.write(nb, str(path))
    report = check_notebook(str(path), warm_start=False)
    assert [r["status"] for r in report["results"]] == ["pass", "pass"]
    assert builds.read_text() == "built\n"


def test_learner_atexit_handlers_do_not_hold_the_check(course):
    # Results are in once the last grade cell ran: the runner ends there, with no teardown.
    hang = helpers.ADD_OK + "import atexit, time\natexit.register(time.sleep, 600)\n"
    path = _learner(course, "atexit", helpers._with(add=hang))
    report = check_notebook(path, timeout=2, warm_start=False)
    assert [r["status"] for r in report["results"] if r["status"] != "hidden"] == ["pass", "pass"]
    assert report["process"]["status"] == "exited" and report["process"]["returncode"] == 0
