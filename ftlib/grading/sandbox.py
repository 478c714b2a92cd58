"""Wrap a learner's kernel in a bubblewrap sandbox: no network, no view of the answers.

`ftlib grade` starts each learner kernel through `wrap`. Inside, the whole file system
is read-only, ``/tmp`` and the temporary directory are empty, the instructor's paths
(solutions, submissions, gradebook, ``.git``) are hidden behind empty mounts, there is
no network (own network namespace), the process sees only its own processes, and all
capabilities are dropped, so even root cannot unmount the hiding mounts.
Only the kernel's working directory and its Jupyter runtime directory are writable.

If ``bwrap`` is missing or cannot create namespaces here, `available` says why and the
grader degrades to timeouts and memory limits with a loud warning.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
import subprocess
import tempfile

__all__ = ["available", "wrap"]


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """Return ``(True, "")`` if bubblewrap really works here, else ``(False, reason)``.

    Runs the same kind of command `wrap` builds (``true`` with no network and a hidden
    directory), because an installed ``bwrap`` can still fail in containers that forbid
    user or network namespaces.
    """
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap is not installed (Debian/Ubuntu: apt-get install -y bubblewrap)"
    with tempfile.TemporaryDirectory() as d:
        cmd = wrap(["true"], hide=[d], writable=[])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"bwrap could not run: {e}"
    if r.returncode != 0:
        return False, f"bwrap cannot create a sandbox here: {r.stderr.strip() or r.returncode}"
    return True, ""


def _inside(path: str, roots) -> bool:
    path = os.path.realpath(path)
    return any(os.path.commonpath([path, os.path.realpath(r)]) == os.path.realpath(r) for r in roots)


def _runtime_paths() -> list[str]:
    """What a kernel needs to start: the environment, the base interpreter, ftlib's tree."""
    import ftlib

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(ftlib.__file__)))
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, package_root)}
    return sorted(p for p in paths if os.path.isdir(p))


def wrap(cmd: list[str], *, hide: list[str], writable: list, cwd: str | None = None,
         env: dict[str, str] | None = None) -> list[str]:
    """Return ``cmd`` prefixed with a bubblewrap invocation.

    Parameters
    ----------
    cmd : list of str
        The command to run inside, e.g. a kernel's argv.
    hide : list of str
        Directories or files that must look empty (an empty tmpfs or ``/dev/null``).
        Paths that do not exist are skipped.
    writable : list of str or (str, str)
        Directories bound read-write, at the same path or as ``(source, destination)``;
        mounted after the hiding, so they may lie inside a hidden directory.
    cwd : str, optional
        Working directory inside the sandbox.
    env : dict, optional
        Environment variables to set inside.
    """
    args = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",  # network, pid, ipc, uts, cgroup (and user where allowed)
        "--die-with-parent",
        "--cap-drop", "ALL",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
    ]
    tmp = tempfile.gettempdir()
    if os.path.realpath(tmp) != "/tmp":
        args += ["--tmpfs", tmp]
    # The interpreter, its packages and ftlib itself may live under the temporary
    # directory (a CI clone in /tmp): put them back read-only, before hiding the
    # instructor's paths, so hidden paths inside them stay hidden.
    for path in _runtime_paths():
        if _inside(path, ("/tmp", tmp)):
            args += ["--ro-bind", path, path]
    for path in hide:
        if os.path.isdir(path):
            args += ["--tmpfs", path]
        elif os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    for path in writable:
        src, dst = (path, path) if isinstance(path, str) else path
        for secret in hide:
            if os.path.commonpath([os.path.abspath(src), os.path.abspath(secret)]) == os.path.abspath(src):
                raise ValueError(f"The writable directory {src!r} would expose the hidden path {secret!r}.")
        if os.path.abspath(src) in ("/", os.path.abspath(tmp), "/tmp"):
            raise ValueError(f"The writable directory {src!r} would expose the whole temporary directory.")
        args += ["--bind", src, dst]
    if cwd:
        args += ["--chdir", cwd]
    for key, value in (env or {}).items():
        args += ["--setenv", key, value]
    return args + ["--"] + list(cmd)
