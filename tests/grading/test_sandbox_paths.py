"""The sandbox works wherever the environment lives, /tmp included, and CI never skips it."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from ftgrade import sandbox


def test_ci_has_a_working_sandbox():
    # Every sandbox test skips where bubblewrap cannot run; in CI that would hide a broken
    # sandbox behind a green run (a clone under /tmp once made all of them skip).
    ok, why = sandbox.available()
    if os.environ.get("CI") and not ok:
        pytest.fail(f"the grading sandbox does not work in CI: {why}")
    if not ok:
        pytest.skip(why)


@pytest.mark.skipif(not sandbox.available()[0], reason="bubblewrap sandbox not available here")
def test_allowed_folders_under_tmp_show_through_the_empty_tmp(monkeypatch):
    with tempfile.TemporaryDirectory(dir="/tmp") as env_dir, tempfile.TemporaryDirectory() as scratch:
        with open(os.path.join(env_dir, "marker.txt"), "w") as f:
            f.write("the environment's files")
        with open(os.path.join("/tmp", os.path.basename(env_dir) + "-other.txt"), "w") as f:
            f.write("another user's temporary file")
        other = f.name
        try:
            real = sandbox.allowed_paths
            monkeypatch.setattr(sandbox, "allowed_paths", lambda environ=None: sorted([*real(environ), env_dir]))
            cmd = sandbox.wrap([sys.executable, "-c", f"import os; print(open({env_dir + '/marker.txt'!r}).read());"
                                f"print(os.path.exists({other!r}))"], writable=[], scratch=scratch)
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        finally:
            os.unlink(other)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["the environment's files", "False"]  # the rest of /tmp stays hidden
