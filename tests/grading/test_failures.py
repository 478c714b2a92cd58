"""When the grading itself fails, the instructor gets the log and the reason, once.

A broken environment (here: a kernel that cannot import a module, as when ftlib is
missing where the kernels run) fails every submission the same way. Each failed
submission's worker log is kept under ``grades/logs/<assignment>/``, its row points to it,
and the batch names the shared error once instead of leaving 20 rows to decode. The
reason comes from the grader's own import of the kernel's modules, never from what a
kernel printed (a learner's kernel could print anything).
"""
from __future__ import annotations

import csv
import os
import shutil

import helpers
from ftgrade.grade import grade_assignment

STUDENTS = ["ann", "ben", "cat"]


def test_a_kernel_that_cannot_start_is_named_once_and_every_log_kept(tmp_path, monkeypatch):
    root = str(tmp_path / "course")
    os.makedirs(root)
    ref = helpers.write_submission(root, "ref", helpers.make_course(root))
    for student in STUDENTS:
        shutil.copytree(ref, os.path.join(root, "submitted", student, helpers.ASSIGNMENT))
    shutil.rmtree(os.path.dirname(ref))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ipykernel_launcher.py").write_text("import a_module_the_kernel_lacks\n")
    monkeypatch.setenv("PYTHONPATH", str(broken))  # outside the sandbox's view, hence no sandbox here
    lines = []
    rows = {r["student"]: r for r in grade_assignment(
        helpers.ASSIGNMENT, course_dir=root, workers=2, timeout=60, cell_timeout=5, use_sandbox=False,
        log=lines.append)}

    cause = "the grading kernel could not start: ModuleNotFoundError: No module named 'a_module_the_kernel_lacks'"
    banner = [line for line in lines if "failed the same way" in line]
    assert len(banner) == 1 and cause in banner[0], lines
    for student in STUDENTS:
        log = os.path.join("grades", "logs", helpers.ASSIGNMENT, f"{student}.log")
        assert rows[student]["status"] == "crashed"
        assert cause in rows[student]["message"] and rows[student]["message"].endswith(f"log: {log}")
        with open(os.path.join(root, log)) as f:
            assert "Kernel died before replying to kernel_info" in f.read()  # the grader's own evidence
    with open(os.path.join(root, "grades", "ps1.csv")) as f:
        assert all(r["message"].endswith(".log") for r in csv.DictReader(f))

    # Fixed environment: graded again (a grader failure is never cached), and the logs go.
    monkeypatch.delenv("PYTHONPATH")
    rows = {r["student"]: r for r in grade_assignment(
        helpers.ASSIGNMENT, course_dir=root, workers=2, timeout=60, cell_timeout=5, use_sandbox=False,
        log=lambda line: None)}
    assert all(rows[s]["total"] == 6 for s in STUDENTS)
    assert os.listdir(os.path.join(root, "grades", "logs", helpers.ASSIGNMENT)) == []


