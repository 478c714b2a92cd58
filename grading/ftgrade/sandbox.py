"""Wrap a learner's kernel in a bubblewrap sandbox that shows only what a kernel needs.

`ftlib grade` starts each learner kernel through `wrap`. The sandbox is an allow-list:
its file system holds only, read-only, the system's programs and libraries (``/usr``
and the ``/bin``, ``/lib`` links), the Python interpreter and environment, the packages of
ftlib and of this grader, the data sets' files, and a minimal ``/etc`` (a ``passwd`` naming the sandbox
user, ``hosts``, the dynamic linker's cache); writable are only the submission's
working copy (shown as ``/home/learner/<assignment>``, the same on every machine) and
the kernel's runtime folder, and ``/tmp`` is empty. No home directory, no
``/etc/shadow``, no course folder, no other submission exists in there. The kernel
runs as an unprivileged user (uid 1000 in its own user namespace) with every capability
dropped, in its own network namespace (no network) and pid namespace, with only the
environment variables it needs (`kernel_env`): API tokens in the grader's environment
stay outside.

If ``bwrap`` is missing or cannot create namespaces here, `available` says why and the
grader degrades to timeouts and memory limits with a loud warning.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile

from ftlib.paths import cache_dir

__all__ = ["available", "wrap", "kernel_env", "allowed_paths", "UID", "WORKDIR"]

UID = 1000  # the learner inside; mapped to the grader's own uid outside
WORKDIR = "/home/learner"  # where a kernel's working copy appears inside
_ETC_FILES = {
    "passwd": f"learner:x:{UID}:{UID}:learner:/tmp:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": f"learner:x:{UID}:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}
# Read from the host's /etc: nothing secret, and programs misbehave without them.
_ETC_FROM_HOST = ("ld.so.cache", "ld.so.conf", "localtime", "alternatives", "mime.types")
# The environment a kernel gets: these exact names only (a prefix would let through, say,
# NBGRADER_DB_PASSWORD).
_ENV_ALLOWED = frozenset((
    "PATH", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
    "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY", "LC_MESSAGES", "TZ", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TQDM_MININTERVAL", "TQDM_DISABLE", "MPLBACKEND",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "NBGRADER_EXECUTION",
    "FTLIB_FASHION_MNIST_DIR", "FTLIB_PROGRESS", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"))


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """Return ``(True, "")`` if bubblewrap really works here, else ``(False, reason)``.

    Runs the same kind of command `wrap` builds (this interpreter, as the sandbox user,
    with no network), because an installed ``bwrap`` can still fail in containers that
    forbid user or network namespaces.
    """
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap is not installed (Debian/Ubuntu: apt-get install -y bubblewrap)"
    with tempfile.TemporaryDirectory() as d:
        cmd = wrap([sys.executable, "-c", f"import os; assert os.getuid() == {UID}"], writable=[], scratch=d)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"bwrap could not run: {e}"
    if r.returncode != 0:
        return False, f"bwrap cannot create a sandbox here: {r.stderr.strip()[-300:] or r.returncode}"
    return True, ""


def _inside(path: str, roots) -> bool:
    path = os.path.realpath(path)
    return any(os.path.commonpath([path, os.path.realpath(r)]) == os.path.realpath(r) for r in roots)


def _ftlib_cache(environ) -> str:
    return str(cache_dir(environ))


def _data_paths(environ) -> list[str]:
    # Fashion-MNIST's Debian package, and ftlib's cache of converted weights.
    return [environ.get("FTLIB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"), _ftlib_cache(environ)]


def allowed_paths(environ=None) -> list[str]:
    """The host directories the sandbox shows, read-only, besides ``/usr`` and ``/etc``.

    The environment and base interpreter (``sys.prefix``, ``sys.base_prefix``), the package
    folders of ftlib and of this grader (not the repository around them, which holds the
    solutions) and the data sets' folders; only those that exist.
    """
    import ftlib

    import ftgrade

    environ = os.environ if environ is None else environ
    packages = [os.path.dirname(os.path.abspath(p.__file__)) for p in (ftlib, ftgrade)]
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *packages, *_data_paths(environ)]
    out = []
    for p in paths:
        real = os.path.realpath(p)
        if os.path.isdir(real) and real not in out and not _inside(real, ["/usr"]):
            out.append(real)
    return sorted(out)


def kernel_env(environ, **extra: str) -> dict[str, str]:
    """The variables of ``environ`` a kernel may see (`_ENV_ALLOWED`), plus ``extra``."""
    env = {k: v for k, v in environ.items() if k in _ENV_ALLOWED}
    env.update(HOME="/tmp", USER="learner", LOGNAME="learner")
    # The grader's cache of converted weights is shown read-only (`allowed_paths`); without
    # one, a kernel converts into its own empty /tmp.
    cache = os.path.realpath(_ftlib_cache(environ))
    env["FTLIB_CACHE"] = cache if os.path.isdir(cache) else "/tmp/.cache/ftlib"
    env.update(extra)
    return env


def _write_etc(scratch: str) -> str:
    etc = os.path.join(scratch, "etc")
    os.makedirs(etc, exist_ok=True)
    for name, text in _ETC_FILES.items():
        with open(os.path.join(etc, name), "w", encoding="utf-8") as f:
            f.write(text)
    return etc


def wrap(cmd: list[str], *, writable: list, scratch: str, hide: list[str] = (), cwd: str | None = None,
         env: dict[str, str] | None = None, tmp_bytes: int | None = None,
         workdir: tuple[str, str] | None = None) -> list[str]:
    """Return ``cmd`` prefixed with a bubblewrap invocation.

    Parameters
    ----------
    cmd : list of str
        The command to run inside, e.g. a kernel's argv.
    writable : list of str or (str, str)
        Directories bound read-write, at the same path or as ``(source, destination)``.
    scratch : str
        A private directory of the caller's where the sandbox's ``/etc`` files are written.
    hide : list of str
        Instructor paths that must look empty even if an allowed path contains them
        (an empty tmpfs or ``/dev/null``); a writable directory may not contain one.
    cwd : str, optional
        Working directory inside the sandbox.
    env : dict, optional
        The whole environment inside (see `kernel_env`); nothing else is inherited.
    tmp_bytes : int, optional
        The size of the sandbox's ``/tmp`` (and of ``workdir``), RAM-backed: what a
        learner writes counts against memory, not the grader's disk.
    workdir : (str, str), optional
        ``(files, inside)``: ``inside`` becomes a new size-limited folder, filled with a
        copy of the host folder ``files`` (bound read-only) before ``cmd`` starts. Nothing
        written there reaches the host.
    """
    args = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",  # network, pid, ipc, uts, cgroup
        "--unshare-user", "--uid", str(UID), "--gid", str(UID),
        "--die-with-parent",
        "--cap-drop", "ALL",
        "--clearenv",
        "--ro-bind", "/usr", "/usr",
    ]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    # An empty /tmp first: the allowed paths bound after it show through even when they live
    # under /tmp (a CI clone there); bound before it, the tmpfs would cover them.
    size = ["--size", str(int(tmp_bytes))] if tmp_bytes else []
    args += ["--dev", "/dev", "--proc", "/proc", *size, "--tmpfs", "/tmp"]
    tmp = tempfile.gettempdir()
    if os.path.realpath(tmp) != "/tmp":
        args += [*size, "--tmpfs", tmp]
    for path in allowed_paths():
        args += ["--ro-bind", path, path]
    # PyTorch's cpuinfo reads the CPU topology; without it, it prints errors in every cell.
    args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    etc = _write_etc(scratch)
    for name in _ETC_FILES:
        args += ["--ro-bind", os.path.join(etc, name), f"/etc/{name}"]
    for name in _ETC_FROM_HOST:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # Instructor paths matter only where an allowed folder holds them: elsewhere they are
    # absent already, and an empty mount would show their names.
    shown = ["/usr", *allowed_paths()]
    for path in (p for p in hide if _inside(p, shown)):
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
    cmd = list(cmd)
    if cmd and os.path.isabs(cmd[0]):
        # "/repo/tests/../.venv/bin/python" (a relative sys.executable): the sandbox has no
        # /repo/tests to walk through, so the path is resolved here, links kept (a venv's).
        cmd[0] = os.path.normpath(cmd[0])
    if workdir:
        files, inside = workdir
        args += ["--ro-bind", files, _RELEASE, *size, "--tmpfs", inside]
        cmd = ["/bin/sh", "-c", f'cp -R {_RELEASE}/. "{inside}" && exec "$@"', "sh", *cmd]
    if cwd:
        args += ["--chdir", cwd]
    for key, value in (env or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue  # bwrap would refuse it; such a name is no variable a kernel reads
        args += ["--setenv", key, value]
    return args + ["--"] + list(cmd)


_RELEASE = "/home/.release"  # where a kernel's files wait, read-only, to be copied into its folder
