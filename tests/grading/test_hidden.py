"""Hidden tests stay hidden in feedback, however the course marks them.

nbgrader hides every line region that starts at a line *containing* its configured
delimiter (``ClearHiddenTests.begin_test_delimeter``, ``BEGIN HIDDEN TESTS`` by
default), so ``# BEGIN HIDDEN TESTS`` and a course's own delimiter are hidden at release;
ftlib's feedback must hide exactly what nbgrader hides. The toy source uses both
``###`` and ``#`` spellings (`test_grade` checks those); here a course configures its own.
"""
from __future__ import annotations

import os

import pytest

import helpers
from ftgrade.feedback import render_feedback
from ftgrade.grade import grade_assignment

CUSTOM = """
c.ClearHiddenTests.begin_test_delimeter = "SECRET CHECKS START"
c.ClearHiddenTests.end_test_delimeter = "SECRET CHECKS STOP"
"""


def _custom_delimiters(nb):
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        cell["source"] = src.replace("### BEGIN HIDDEN TESTS", "# SECRET CHECKS START").replace(
            "### END HIDDEN TESTS", "# SECRET CHECKS STOP").replace(
            "# BEGIN HIDDEN TESTS", "## SECRET CHECKS START").replace("# END HIDDEN TESTS", "## SECRET CHECKS STOP")


@pytest.mark.parametrize("begin, end, delimiters", [
    ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS", None),
    ("# BEGIN HIDDEN TESTS", "# END HIDDEN TESTS", None),
    ("#BEGIN HIDDEN TESTS please", "#END HIDDEN TESTS", None),
    ("# SECRET CHECKS START", "# SECRET CHECKS STOP", ("SECRET CHECKS START", "SECRET CHECKS STOP")),
])
def test_feedback_hides_what_nbgrader_hides(begin, end, delimiters):
    cell = {"cell_type": "code", "source": f"check(1)\n{begin}\nsecret_check()  # MARK\n{end}\n",
            "metadata": {"nbgrader": {"grade": True, "grade_id": "t", "points": 1}},
            "outputs": [{"output_type": "error", "ename": "AssertionError", "evalue": "wrong",
                         "traceback": ["----> 3 secret_check()  # MARK", "AssertionError: wrong"]}]}
    grades = [{"grade_id": "t", "score": 0.0, "max_score": 1, "message": "AssertionError: wrong"}]
    kwargs = {"hidden_delimiters": delimiters} if delimiters else {}
    page = render_feedback({"cells": [cell]}, grades, student="s", assignment="a", notebook="n", status="ok",
                           **kwargs)
    assert "MARK" not in page and "secret_check" not in page
    assert "check(1)" in page and "AssertionError: wrong" in page


def test_an_unterminated_region_hides_the_rest_of_the_cell():
    cell = {"cell_type": "code", "source": "a = 1\n### BEGIN HIDDEN TESTS\nsecret()  # MARK\n", "metadata": {},
            "outputs": []}
    page = render_feedback({"cells": [cell]}, [], student="s", assignment="a", notebook="n", status="ok")
    assert "MARK" not in page and "a = 1" in page


def test_a_course_with_its_own_delimiter(tmp_path):
    root = str(tmp_path)
    release = helpers.make_course(root, config=CUSTOM, edit=_custom_delimiters)
    assert "HIDDEN-MARKER" not in open(release).read()  # nbgrader hid them at release
    helpers.write_submission(root, "ref", release)
    rows = grade_assignment(helpers.ASSIGNMENT, course_dir=root, workers=1, timeout=60, cell_timeout=5,
                            memory=800 * 2**20, log=lambda line: None)
    assert (rows[0]["status"], rows[0]["total"]) == ("ok", 6)  # the hidden tests ran
    with open(os.path.join(root, "feedback", "ref", "ps1", "ps1.html")) as f:
        page = f.read()
    assert "HIDDEN-MARKER" not in page and "SECRET CHECKS" not in page
