"""Memory limits count what a process tree really uses, and name the cell that ran out.

Forked children share their parent's pages until they write them, so summing resident
set sizes counts those pages once per process: a 400 MB process with two forked
children "uses" 1.2 GB. Where cgroup v2 can be used the kernel enforces the limit (as
Slurm and Kubernetes do); otherwise proportional set size (PSS) is summed, which
splits each shared page between its sharers.
"""
from __future__ import annotations

import os
import sys

import pytest

from ftgrade import limits
from ftgrade.limits import run_limited

FORKED = """
import os, time
block = bytearray(400 * 2**20)
block[::4096] = b"x" * len(block[::4096])  # touch every page
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        time.sleep(3)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_forked_pages_are_counted_once(monkeypatch):
    monkeypatch.setattr(limits, "_memory_cgroup", lambda: None)  # measure, do not delegate to the kernel
    r = run_limited([sys.executable, "-c", FORKED], memory=800 * 2**20, timeout=60)
    assert (r.status, r.returncode) == ("exited", 0), r
    assert 400 * 2**20 <= r.peak_rss < 800 * 2**20


def test_a_memory_hog_is_still_stopped(monkeypatch):
    monkeypatch.setattr(limits, "_memory_cgroup", lambda: None)
    hog = [sys.executable, "-c", "b = []\nwhile True:\n    b.append(bytearray(50 * 2**20))\n"
           "    b[-1][::4096] = b'x' * len(b[-1][::4096])"]
    assert run_limited(hog, memory=300 * 2**20, timeout=60).status == "memory"


def test_a_cgroup_limit_is_set_and_its_oom_kill_read(tmp_path):
    # A stand-in for a delegated cgroup v2 folder: the files the kernel would provide.
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    group = limits.MemoryCgroup(str(tmp_path), 512 * 2**20)
    assert open(os.path.join(group.path, "memory.max")).read() == str(512 * 2**20)
    assert open(os.path.join(group.path, "memory.swap.max")).read() == "0"
    group.add(os.getpid())
    assert open(os.path.join(group.path, "cgroup.procs")).read() == str(os.getpid())
    (tmp_path / os.path.basename(group.path) / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (tmp_path / os.path.basename(group.path) / "memory.peak").write_text(str(600 * 2**20))
    assert group.oom_killed() and group.peak() == 600 * 2**20


def test_the_cgroup_is_used_only_where_it_can_be(tmp_path, monkeypatch):
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(limits, "_own_cgroup", lambda: str(tmp_path))
    assert limits._memory_cgroup() is None  # no memory controller delegated here


def test_default_workers_respect_affinity_and_memory(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    assert limits.default_workers(None) == cores
    monkeypatch.setattr(limits, "available_memory", lambda: 5 * 2**30)
    assert limits.default_workers(2 * 2**30) == min(cores, 2)
    assert limits.default_workers(8 * 2**30) == 1  # never 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert limits.default_workers(None) == 1


@pytest.mark.skipif(limits._memory_cgroup() is None, reason="no delegated cgroup v2 memory controller here")
def test_the_kernel_enforces_a_cgroup_limit():
    hog = [sys.executable, "-c", "b = []\nwhile True:\n    b.append(bytearray(50 * 2**20))\n"
           "    b[-1][::4096] = b'x' * len(b[-1][::4096])"]
    r = run_limited(hog, memory=300 * 2**20, timeout=60)
    assert r.status == "memory" and r.peak_rss <= 320 * 2**20
    r = run_limited([sys.executable, "-c", FORKED], memory=800 * 2**20, timeout=60)
    assert r.status == "exited", r
