"""Re-grading skips a submission only when nothing that decides its grade changed.

The key of a graded submission covers its files, the assignment in the gradebook (grade
cells, points, hidden tests), the source folder (notebook and support files such as the
checks module), ftlib's own code (the reference implementations the checks compare
against) and the options. One course, changed one thing at a time.
"""
from __future__ import annotations

import json
import os

import helpers
from ftgrade import grade, gradebook


def _graded(root: str) -> int:
    lines = []
    grade.grade_assignment(helpers.ASSIGNMENT, course_dir=root, workers=1, timeout=60, cell_timeout=5,
                           memory=800 * 2**20, log=lines.append)
    return int([line.split()[1] for line in lines if line.startswith("Grading ")][0])


def _edit_source(root: str, edit) -> None:
    path = os.path.join(root, "solutions", helpers.ASSIGNMENT, f"{helpers.ASSIGNMENT}.ipynb")
    nb = helpers.load(path)
    edit(nb)
    with open(path, "w") as f:
        json.dump(nb, f)


def _new_hidden_test(nb) -> None:
    cell = helpers._find(nb, "test_add_hidden")
    cell["source"] = helpers._src(cell).replace(
        "### END HIDDEN TESTS", "check_close(add(0, 0), 0, 'add(0, 0)')\n### END HIDDEN TESTS")


def test_what_changed_decides_what_is_graded_again(tmp_path, monkeypatch):
    from nbgrader.converters import GenerateAssignment

    root = str(tmp_path / "course")
    os.makedirs(root)
    helpers.write_submission(root, "ref", helpers.make_course(root))
    code = tmp_path / "ftlib-code"
    code.mkdir()
    (code / "reference.py").write_text("def add(a, b):\n    return a + b\n")
    monkeypatch.setattr(grade, "_CODE_ROOT", str(code), raising=False)
    assert _graded(root) == 1
    assert _graded(root) == 0

    # Python's byte-code caches and Jupyter's checkpoints are not changes.
    src = os.path.join(root, "solutions", helpers.ASSIGNMENT)
    os.makedirs(os.path.join(src, "__pycache__"))
    (tmp_path / "course" / "solutions" / helpers.ASSIGNMENT / "__pycache__" / "ps1_checks.cpython-311.pyc").write_bytes(b"\0")
    os.makedirs(os.path.join(src, ".ipynb_checkpoints"))
    assert _graded(root) == 0

    _edit_source(root, lambda nb: nb["cells"].append({"cell_type": "markdown", "id": "a-note", "metadata": {}, "source": "A note."}))
    assert _graded(root) == 1, "the source notebook changed"

    with open(os.path.join(src, "ps1_checks.py"), "a") as f:
        f.write("\n# a stricter tolerance next term\n")
    assert _graded(root) == 1, "the checks module changed"

    (code / "reference.py").write_text("def add(a, b):\n    return b + a\n")
    assert _graded(root) == 1, "ftlib's code changed"

    _edit_source(root, _new_hidden_test)
    coursedir, cfg = gradebook.load_coursedir(root)
    coursedir.assignment_id = helpers.ASSIGNMENT
    cfg.GenerateAssignment.force = True
    with helpers.venv_on_path():
        GenerateAssignment(coursedir=coursedir, config=cfg).start()
    assert _graded(root) == 1, "the hidden tests in the gradebook changed"
    assert _graded(root) == 0
