"""`ftlib grade --scheduler`: a Dask cluster grades exactly as a local run does.

A scheduler and two workers are started on 127.0.0.1 as command lines, the way an
instructor starts them on a cluster's nodes. The same submissions are graded locally
and on the cluster, in two copies of one course; the CSV, the gradebook's scores and
comments and the feedback pages must be identical. A worker without a working sandbox
refuses to grade.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import helpers

pytest.importorskip("distributed")

from ftgrade import cluster, grade, sandbox  # noqa: E402

STUDENTS = ["ref", "syntax", "stub", "exit", "always_equal"]
DASK = os.path.join(os.path.dirname(sys.executable), "dask")


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    address_file = str(folder / "scheduler.json")
    common = ["--no-dashboard"]
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", address_file, *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(600):
            if os.path.exists(address_file) and os.path.getsize(address_file):
                break
            time.sleep(0.1)
        for _ in range(2):
            procs.append(subprocess.Popen([DASK, "worker", "--scheduler-file", address_file, "--host", "127.0.0.1",
                                           "--nthreads", "1", "--memory-limit", "0", *common],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with open(address_file) as f:
            address = json.load(f)["address"]
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _gradebook(root: str) -> dict:
    from nbgrader.api import Gradebook

    out = {}
    with Gradebook(f"sqlite:///{root}/gradebook.db") as gb:
        for student in STUDENTS:
            snb = gb.find_submission_notebook(helpers.ASSIGNMENT, helpers.ASSIGNMENT, student)
            out[student] = ({g.name: (g.auto_score, g.needs_manual_grade) for g in snb.grades},
                            {c.name: c.auto_comment for c in snb.comments})
    return out


def _feedback(root: str) -> dict:
    out = {}
    for student in STUDENTS:
        folder = os.path.join(root, "feedback", student, helpers.ASSIGNMENT)
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                out[(student, name)] = f.read()
    return out


def test_a_cluster_grades_like_a_local_run(tmp_path, scheduler):
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    os.makedirs(local)
    release = helpers.make_course(local)
    for student in STUDENTS:
        helpers.write_submission(local, student, release)
    shutil.copytree(local, remote)
    kwargs = dict(workers=2, timeout=60, cell_timeout=5, memory=800 * 2**20, log=lambda line: None)
    rows_local = grade.grade_assignment(helpers.ASSIGNMENT, course_dir=local, **kwargs)
    lines = []
    rows_remote = grade.grade_assignment(helpers.ASSIGNMENT, course_dir=remote, scheduler=scheduler,
                                         **dict(kwargs, log=lines.append))

    assert any("2 worker(s)" in line for line in lines), lines
    assert [(r["student"], r["total"]) for r in rows_local] == [
        ("always_equal", 3), ("exit", 3), ("ref", 6), ("stub", 0), ("syntax", 3)]
    with open(os.path.join(local, "grades", "ps1.csv")) as a, open(os.path.join(remote, "grades", "ps1.csv")) as b:
        assert a.read() == b.read()
    assert rows_local == rows_remote
    assert _gradebook(local) == _gradebook(remote)
    assert _feedback(local) == _feedback(remote)
    assert os.path.exists(os.path.join(remote, "grades", "logs", helpers.ASSIGNMENT, "exit.log"))


def test_a_worker_without_a_sandbox_refuses(tmp_path, monkeypatch):
    root = str(tmp_path)
    helpers.write_submission(root, "ref", helpers.make_course(root))
    job = {"student": "ref", "hash": "h", "timeout": 60, "memory": None,
           "spec": {"output_dir": str(tmp_path / "out"), "submission_dir": os.path.join(root, "submitted", "ref", "ps1")}}
    monkeypatch.setattr(sandbox, "available", lambda: (False, "bubblewrap is not installed"))
    with pytest.raises(RuntimeError, match="refuses to grade without a sandbox: bubblewrap is not installed"):
        cluster.grade_task(cluster.portable_job(job, use_sandbox=True), {"template": b"", "support": {}})
