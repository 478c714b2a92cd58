"""Shared fixtures: one toy course per session, one graded batch of every fault."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helpers  # noqa: E402

# Small limits keep the suite in minutes on two cores: a worker plus its kernel use
# about 200 MiB, so 800 MiB is plenty for an honest submission.
CELL_TIMEOUT = 5
MEMORY = 800 * 2**20


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("course"))
    release = helpers.make_course(root)
    return root, release


@pytest.fixture(scope="session")
def graded(course):
    """Grade every submission in `helpers.FAULTS` in one parallel batch."""
    from ftgrade.grade import grade_assignment

    root, release = course
    for student in helpers.FAULTS:
        helpers.write_submission(root, student, release)
    lines = []
    rows = grade_assignment(helpers.ASSIGNMENT, course_dir=root, workers=2, timeout=60,
                            cell_timeout=CELL_TIMEOUT, memory=MEMORY, log=lines.append)
    return root, {r["student"]: r for r in rows}, lines
