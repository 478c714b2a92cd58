"""A warm process for `ftlib check`: torch and transformers imported once, forked per check.

A cold `ftlib check` spends most of its seconds importing libraries: torch (~1.5 s) and,
for the checks that build a tiny BERT, transformers (~3 s). So the first check also
starts a small server in the background that imports them once and waits on a Unix
socket in a folder only its user can open. Each later check asks it to fork a fresh
process, which runs exactly what a cold check runs (`_runner.main`) in the learner's
folder and environment, with the learner's output going where the cold check's would.
The server never runs learner code itself, so every check starts from the same clean
state; it exits after ``FTLIB_CHECK_WARM_IDLE`` idle seconds (default 900), and a
different one serves when ftlib's code, the installed packages or the environment
that imports read change.

For learners' self-checks only: `ftlib grade` never uses it. It is off with
``FTLIB_CHECK_WARM=0``, in CI (``CI`` set), under a ``--memory`` limit (the limit
watches the checking process tree, and a served check is not in it), and where less
than 3 GiB of memory is available (Binder): the idle server holds about 0.5 GB.

    python -m ftgrade.warm SOCKET FD    # what `ftlib check` starts; not run by hand
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback

from ftgrade.limits import RunResult, available_memory

__all__ = ["enabled", "socket_path", "run", "start", "stop"]

MIN_MEMORY = 3 * 2**30
# Environment that the imported libraries read when they are imported (offline mode,
# thread counts, backends, caches): a server started under other values must not serve.
_IMPORT_ENV = ("HF_", "TRANSFORMERS_", "TORCH", "OMP_", "MKL_", "KMP_", "PYTHON", "MPL", "TOKENIZERS_",
               "FTLIB_", "TQDM_", "CUDA_", "LD_", "XDG_CACHE_HOME", "HOME", "PATH")


def enabled(memory: int | None = None) -> bool:
    """Whether `ftlib check` should use (and start) a warm server here."""
    choice = os.environ.get("FTLIB_CHECK_WARM", "").strip().lower()
    if choice in ("0", "no", "false", "off"):
        return False
    if choice in ("1", "yes", "true", "on"):
        return memory is None
    return memory is None and not os.environ.get("CI") and hasattr(socket, "AF_UNIX") \
        and available_memory() >= MIN_MEMORY


def _key(env: dict) -> str:
    h = hashlib.sha256(sys.executable.encode())
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder, _, files in sorted(os.walk(package)):
        for name in sorted(f for f in files if f.endswith(".py")):
            st = os.stat(os.path.join(folder, name))
            h.update(f"{folder}/{name}:{st.st_mtime_ns}:{st.st_size};".encode())
    for path in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        h.update(f"{path}:{os.stat(path).st_mtime_ns};".encode() if os.path.isdir(path) else b"")
    for k in sorted(env):
        if k.startswith(_IMPORT_ENV):
            h.update(f"{k}={env[k]};".encode())
    return h.hexdigest()[:16]


def socket_path(env: dict) -> str:
    """The server's socket for this environment, in a folder only this user can open."""
    folder = os.path.join(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"ftlib-check-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.stat(folder)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{folder} must belong to you and be private (mode 700)")
    return os.path.join(folder, _key(env) + ".sock")


def start(path: str, env: dict) -> None:
    """Start a server on ``path`` in the background, unless one is there already.

    The socket is bound here, before the server has imported anything, so a check
    started a moment later waits for it rather than running cold.
    """
    listener = _bind(path)
    if listener is None:
        return
    with listener:
        subprocess.Popen([sys.executable, "-m", "ftgrade.warm", path, str(listener.fileno())],
                         env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=[listener.fileno()])


def _bind(path: str) -> socket.socket | None:
    # A listening socket on ``path``; None when a live server already listens there.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
    except OSError:
        try:  # a server is there already, or a dead one left its socket file
            _connect(path).close()
            listener.close()
            return None
        except OSError:
            os.unlink(path)
            listener.bind(path)
    listener.listen(16)
    return listener


def stop(path: str) -> bool:
    """Ask the server on ``path`` to exit; False when none was listening."""
    try:
        with _connect(path) as s:
            _send(s, {"stop": True}, [])
            s.settimeout(60)  # a server still importing answers when it is done
            s.recv(1)
        return True
    except OSError:
        return False


def run(path: str, argv: list[str], *, env: dict, cwd: str, timeout: float, show_output: bool) -> RunResult | None:
    """Run ``_runner.main(argv)`` in a process forked by the server; None when no server answers."""
    out = os.dup(2) if show_output else os.open(os.devnull, os.O_WRONLY)
    started = time.monotonic()
    try:
        s = _connect(path)
        _send(s, {"argv": argv, "env": env, "cwd": cwd}, [out, out])
    except OSError:
        return None
    finally:
        os.close(out)
    with s:
        s.settimeout(timeout)
        reply, pid = b"", None
        try:
            while chunk := s.recv(4096):
                reply += chunk
                lines = reply.decode().split("\n")
                if pid is None and len(lines) > 1:
                    pid = int(lines[0].split()[1])
        except TimeoutError:
            if pid is not None:
                _kill_group(pid)
            return RunResult("timeout", -9, time.monotonic() - started, None)
        except BaseException:  # Ctrl-C: the check stops with the command
            if pid is not None:
                _kill_group(pid)
            raise
    lines = reply.decode().split("\n")
    if pid is None:  # the server went away before forking: check cold instead
        return None
    ends = [line for line in lines if line.startswith("exit ")]
    code = int(ends[0].split()[1]) if ends else -9  # no exit line: the process died of a signal
    return RunResult("ok" if ends else "crashed", code, time.monotonic() - started, None)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


def _send(s: socket.socket, message: dict, fds: list[int]) -> None:
    data = json.dumps(message).encode()
    socket.send_fds(s, [struct.pack("!I", len(data)) + data], fds)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        more = conn.recv(1 << 16)
        if not more:
            raise ConnectionError("the request was cut short")
        data += more
    return json.loads(data[4:4 + struct.unpack("!I", data[:4])[0]]), fds


# The libraries the course's checks use, imported once by the server.
_LIBRARIES = ("numpy", "torch", "matplotlib.pyplot", "sklearn.linear_model", "sklearn.metrics")


def _preload() -> None:
    # The libraries, then every checks module (which imports ftlib's steps), its PRELOAD and PREPARE.
    import importlib

    from ftlib.checks import ASSIGNMENTS

    from ftgrade._runner import prepare

    names = list(_LIBRARIES) + [f"ftlib.checks.{module}" for module in ASSIGNMENTS.values()]
    imported = []
    while names:
        try:
            mod = importlib.import_module(names.pop(0))
        except ImportError:  # an optional library: a check that needs it imports it itself
            continue
        imported.append(mod.__name__)
        names += getattr(mod, "PRELOAD", ())
    prepare(imported)  # the checks' shared, seeded state (ftlib's own code, no learner code)


def _serve_one(conn: socket.socket, message: dict, fds: list[int]) -> None:
    # In the forked child: become the cold runner's process, then report how it ended.
    code = 1
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(message["env"])
        sys.path[0] = message["cwd"]  # as `python -m` started in that folder has it
        conn.sendall(f"pid {os.getpid()}\n".encode())
        from ftgrade import _runner

        code = _runner.main(message["argv"])
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(f"exit {code}\n".encode())
        finally:
            os._exit(code)


def serve(path: str, listener: socket.socket, idle: float) -> None:
    """Answer requests on ``listener`` (bound to ``path``) until ``idle`` seconds pass without one."""
    inode = os.stat(path).st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    try:
        _preload()
        listener.settimeout(idle)
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return
            with conn:
                conn.settimeout(5)
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid != os.getuid():
                    continue
                try:
                    message, fds = _receive(conn)
                except (OSError, ValueError):
                    continue
                if message.get("stop"):
                    return
                if os.fork() == 0:
                    listener.close()
                    _serve_one(conn, message, fds)
                for fd in fds:
                    os.close(fd)
    finally:
        listener.close()
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    serve(sys.argv[1], socket.socket(fileno=int(sys.argv[2])), float(os.environ.get("FTLIB_CHECK_WARM_IDLE", "900")))
