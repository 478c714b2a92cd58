"""`ftlib grade` on a class with real-world student ids, graded whole and then in part.

Student ids are e-mail addresses and LMS ids: long, with dots, ``+``, ``@``, ``-``, ``_``
and non-ASCII letters. Every one must grade exactly as a short id does, and grading a
subset of the class must keep every other student's row and re-grade state.
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

import helpers
from ftlib.grading.grade import grade_assignment

IDS = ["ref", "ada", "bob", "cy"]


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("class"))
    release = helpers.make_course(root)
    ref = helpers.write_submission(root, "ref", release)
    for student in IDS[1:]:
        shutil.copytree(ref, os.path.join(root, "submitted", student, helpers.ASSIGNMENT))
    rows = grade_assignment(helpers.ASSIGNMENT, course_dir=root, workers=2, timeout=60, cell_timeout=5,
                            memory=800 * 2**20, log=lambda line: None)
    return root, {r["student"]: r for r in rows}


def _csv(root: str) -> dict[str, dict]:
    with open(os.path.join(root, "grades", f"{helpers.ASSIGNMENT}.csv"), encoding="utf-8") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


def _state(root: str) -> dict:
    with open(os.path.join(root, "autograded", f".ftlib-grade-{helpers.ASSIGNMENT}.json"), encoding="utf-8") as f:
        return json.load(f)


def test_grading_one_student_keeps_the_others(klass):
    root, _ = klass
    before_csv, before_state = _csv(root), _state(root)
    assert set(before_csv) == set(IDS)
    lines = []
    rows = grade_assignment(helpers.ASSIGNMENT, course_dir=root, students=[IDS[2]], force=True, workers=1,
                            timeout=60, cell_timeout=5, memory=800 * 2**20, log=lines.append)
    assert [r["student"] for r in rows] == [IDS[2]]
    assert any("Grading 1 submission(s)" in line for line in lines), lines
    assert _csv(root) == before_csv
    assert set(_state(root)) == set(before_state)
    # And a full run afterwards grades only what was never stored: no one's state was lost.
    lines.clear()
    grade_assignment(helpers.ASSIGNMENT, course_dir=root, workers=2, timeout=60, cell_timeout=5,
                     memory=800 * 2**20, log=lines.append)
    assert any(f"Grading {len(IDS) - len(before_state)} submission(s)" in line for line in lines), lines
    assert _csv(root) == before_csv
