"""`ftlib grade` on the toy course: every fault gets its status and score; the batch goes on."""
from __future__ import annotations

import csv
import json
import os

import pytest

import helpers
from ftgrade import sandbox
from ftgrade.grade import grade_assignment, grade_main


@pytest.mark.parametrize("student", sorted(helpers.FAULTS))
def test_fault_status_and_score(graded, student):
    _, rows, _ = graded
    _, status, total = helpers.FAULTS[student]
    row = rows[student]
    assert (row["status"], row["total"], row["max_total"]) == (status, total, 6), row["message"]


def test_per_cell_scores_of_a_syntax_error(graded):
    row = graded[1]["syntax"]
    assert (row["test_add"], row["test_add_hidden"], row["test_normalize"], row["test_normalize_hidden"]) == (0, 0, 1, 2)


def test_points_edited_in_metadata_are_restored(graded):
    row = graded[1]["points"]
    assert row["test_add"] == 1 and row["max_total"] == 6


def test_messages_explain_failures(graded):
    rows = graded[1]
    assert "timed out" in rows["loop"]["message"]
    assert "output truncated" in rows["flood"]["message"]
    assert "MiB" in rows["memory"]["message"]
    assert rows["memory_error"]["message"].startswith("MemoryError in cell(s) ")
    assert "(test_add)" in rows["memory_error"]["message"] and "(test_add_hidden)" in rows["memory_error"]["message"]
    assert "kernel died" in rows["exit"]["message"]
    assert "misnamed" in rows["misnamed"]["message"]
    assert "not valid JSON" in rows["badjson"]["message"]
    # Patching the checks or numpy in the kernel changes nothing the judge uses: nothing to undo or report.
    assert rows["patch_checks"]["message"] == rows["patch_numpy"]["message"] == ""
    assert "duplicate cell ids repaired" in rows["dupids"]["message"]


def test_endless_printing_is_truncated(graded):
    root = graded[0]
    with open(os.path.join(root, "autograded", "flood", "ps1", "ps1.ipynb")) as f:
        nb = json.load(f)
    size = sum(len("".join(o.get("text", ""))) for c in nb["cells"] for o in c.get("outputs", []))
    assert size < 1_200_000


def test_gradebook_holds_the_scores(graded):
    from nbgrader.api import Gradebook

    root = graded[0]
    with Gradebook(f"sqlite:///{root}/gradebook.db") as gb:
        assert gb.find_submission("ps1", "ref").score == 6
        assert gb.find_submission("ps1", "syntax").score == 3
        memory = gb.find_submission("ps1", "memory")
        assert memory.score == 0 and memory.needs_manual_grade


def test_csv_has_one_row_per_student(graded):
    root = graded[0]
    with open(os.path.join(root, "grades", "ps1.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["student"] for r in rows} == set(helpers.FAULTS)
    assert list(rows[0])[:2] == ["student", "assignment"]
    assert {"test_add", "test_add_hidden", "total", "status"} <= set(rows[0])


def test_feedback_never_shows_hidden_tests(graded):
    root = graded[0]
    pages = 0
    for student in helpers.FAULTS:
        folder = os.path.join(root, "feedback", student, "ps1")
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                with open(os.path.join(folder, name)) as f:
                    text = f.read()
                assert "HIDDEN-MARKER" not in text, student
                pages += 1
    assert pages >= 15
    with open(os.path.join(root, "feedback", "syntax", "ps1", "ps1.html")) as f:
        assert "SyntaxError" in f.read() or "NameError" in f.read()


@pytest.mark.skipif(not sandbox.available()[0], reason="bubblewrap sandbox not available here")
def test_learner_code_cannot_read_answers_or_reach_the_network(graded):
    root = graded[0]
    with open(os.path.join(root, "autograded", "leak", "ps1", "ps1.ipynb")) as f:
        nb = json.load(f)
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    lines = [ln for ln in text.splitlines() if ln.startswith("LEAK")]
    assert len(lines) == 5, text
    assert all("blocked" in ln for ln in lines if "cwd" not in ln), lines
    assert "ps1.ipynb" not in [ln for ln in lines if "cwd" in ln][0]


def test_rerun_grades_only_what_changed(graded, course):
    root, release = course
    lines = []
    rows = grade_assignment("ps1", course_dir=root, workers=2, timeout=60, cell_timeout=5,
                            memory=800 * 2**20, log=lines.append)
    assert any("Grading 0 submission(s)" in ln for ln in lines), lines
    assert {r["student"]: r["total"] for r in rows}["ref"] == 6


def test_include_hidden_and_force(graded, tmp_path):
    root = graded[0]
    rc = grade_main(["ps1", "--course-dir", root, "--student", "stub", "--force", "--include-hidden",
                     "--cell-timeout", "5", "--memory", "800M", "--csv", str(tmp_path / "one.csv")])
    assert rc == 0
    with open(os.path.join(root, "feedback", "stub", "ps1", "ps1.html")) as f:
        assert "HIDDEN-MARKER" in f.read()
    with open(tmp_path / "one.csv") as f:
        assert [r["student"] for r in csv.DictReader(f)] == ["stub"]


def test_usage_errors_exit_2(course, capsys):
    root, _ = course
    assert grade_main(["nope", "--course-dir", root]) == 2
    assert "not in the gradebook" in capsys.readouterr().err
    assert grade_main(["ps1", "--course-dir", root, "--memory", "lots"]) == 2
    assert grade_main(["ps1", "--course-dir", root, "--workers", "0"]) == 2
