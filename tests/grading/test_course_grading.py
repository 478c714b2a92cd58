"""`ftlib grade` on the real course: the reference gets full marks, the release none, a cheat is flagged.

Every assignment of the course is released with nbgrader into a course folder outside the
repository, then graded with the judge: the solution notebook as one student's submission,
the unanswered release as another's, and a third that hands in ftlib's own reference for
the first exercise through an import. The grade cells run outside the learner's kernel, so
this is the end-to-end test that every exercise's probe and verdict work across the
boundary on the course's real models and data.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from ftlib.checks import ASSIGNMENTS
from ftgrade.grade import grade_assignment

import helpers

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = """c = get_config()
import os
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "ftlib"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"
c.Execute.timeout = 600
"""
# First solution cell of each notebook handed in as ftlib's reference: (grade_id, replacement).
CHEAT = {"01_choose_model": ("count_parameters", "from ftlib.models import count_parameters\n")}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from nbgrader.converters import GenerateAssignment

    from ftgrade.gradebook import load_coursedir

    root = str(tmp_path_factory.mktemp("real-course"))
    with open(os.path.join(root, "nbgrader_config.py"), "w") as f:
        f.write(CONFIG)
    for name in ASSIGNMENTS:
        shutil.copytree(os.path.join(REPO, "solutions", name), os.path.join(root, "solutions", name))
    with helpers.venv_on_path():
        for name in ASSIGNMENTS:
            coursedir, cfg = load_coursedir(root)
            coursedir.assignment_id = name
            GenerateAssignment(coursedir=coursedir, config=cfg).start()
    for name in ASSIGNMENTS:
        for student, folder in (("reference", "solutions"), ("unanswered", "course")):
            dst = os.path.join(root, "submitted", student, name)
            os.makedirs(dst)
            shutil.copy(os.path.join(root, folder, name, f"{name}.ipynb"), dst)
    for name, (grade_id, code) in CHEAT.items():
        nb = helpers.load(os.path.join(root, "solutions", name, f"{name}.ipynb"))
        helpers.set_solution(nb, grade_id, code)
        dst = os.path.join(root, "submitted", "cheat", name)
        os.makedirs(dst)
        with open(os.path.join(dst, f"{name}.ipynb"), "w") as f:
            json.dump(nb, f)
    return root


@pytest.mark.parametrize("assignment", list(ASSIGNMENTS))
def test_reference_full_marks_release_none(course, assignment):
    rows = {r["student"]: r for r in grade_assignment(
        assignment, course_dir=course, workers=2, timeout=1200, memory=3 * 2**30, log=lambda line: None)}
    ref, blank = rows["reference"], rows["unanswered"]
    points = [k for k in ref if k.startswith("test_")]
    assert ref["status"] == "ok" and points, ref
    assert all(ref[k] > 0 for k in points), ref  # nbgrader scores a grade cell all or nothing
    assert all(blank[k] == 0 for k in points), blank
    assert "FLAGGED" not in ref["message"], ref["message"]
    if assignment in CHEAT:
        cheat = rows["cheat"]
        assert cheat[f"test_{CHEAT[assignment][0]}_values"] > 0  # ftlib's reference passes the check ...
        assert "FLAGGED, uses ftlib's reference" in cheat["message"]  # ... and the instructor is told
        assert "ftlib.models.count_parameters" in cheat["message"], cheat["message"]
