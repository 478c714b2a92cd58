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
from ftgrade.grade import grade_assignment

IDS = [
    "ref",
    "syntax_error_one_exercise",
    "ada.lovelace+ml-2026@students.example-university.edu",
    "lms_" + "0123456789abcdef-" * 5 + "x" * 11,  # 100 characters
    "zoë.núñez-åström_李小龍@universität.de",
]


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
    with open(os.path.join(root, "grades", f".ftlib-grade-{helpers.ASSIGNMENT}.json"), encoding="utf-8") as f:
        return json.load(f)


def test_100_characters_is_a_real_id():
    assert len(IDS[3]) == 100


@pytest.mark.parametrize("student", IDS)
def test_every_id_grades_as_a_short_one(klass, student):
    root, rows = klass
    assert (rows[student]["status"], rows[student]["total"], rows[student]["message"]) == ("ok", 6, "")
    assert os.path.isfile(os.path.join(root, "feedback", student, helpers.ASSIGNMENT, f"{helpers.ASSIGNMENT}.html"))


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


def test_kernel_sockets_fit_under_a_long_temporary_directory(tmp_path):
    from ftgrade.autograde import _SOCKET_NAME, _SOCKET_PATH_BYTES, runtime_dir

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    rt = runtime_dir(str(deep))
    try:
        assert len(os.fsencode(os.path.join(rt, _SOCKET_NAME))) <= _SOCKET_PATH_BYTES
    finally:
        os.rmdir(rt)
