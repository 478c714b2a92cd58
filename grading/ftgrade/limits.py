"""Run a command with a wall-clock limit and a memory limit on its whole process tree.

Used by `ftlib check` (one runner process) and `ftlib grade` (one worker per
submission). Where this process may create cgroup v2 groups with the memory controller
(a delegated subtree, as systemd, Slurm and Kubernetes set up), each run gets its own
group with ``memory.max`` set, so the kernel itself enforces the limit on everything
the run starts, and its OOM kill is reported as ``"memory"``. Elsewhere the proportional
set size (PSS) of the process and all its descendants is polled with a 0.05 s interval
(so it can overshoot by what the tree allocates in that time) and the tree is killed
when it goes over. PSS, not RSS: a page shared by forked processes counts once in all,
where summed RSS counts it in every process. RLIMIT_AS is not used on purpose: torch
reserves far more address space than it touches, so an address-space limit breaks
``import torch`` long before real memory runs out.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from typing import NamedTuple

import psutil

__all__ = ["RunResult", "run_limited", "watch", "parse_memory", "kill_tree", "MemoryCgroup",
           "available_memory", "default_workers", "tmp_bytes"]

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class RunResult(NamedTuple):
    """How a limited run ended: ``status`` is ``"exited"``, ``"timeout"`` or ``"memory"``."""

    status: str
    returncode: int | None
    wall_s: float
    peak_rss: int


def tmp_bytes(memory: int | None) -> int:
    """The size of a sandboxed kernel's ``/tmp`` and of its working folder (each), in RAM.

    A quarter of the submission's memory limit (1 GiB without one), at least 64 MiB: a
    learner's files are capped, and where a cgroup counts the memory, they count in it.
    """
    return max(64 * 2**20, (memory if memory else 4 * 2**30) // 4)


def parse_memory(value: str | int | None) -> int | None:
    """Parse a memory size such as ``"2G"``, ``"512M"`` or ``1073741824`` into bytes.

    ``None``, ``"0"`` and ``"none"`` mean no limit and return None.

    Examples
    --------
    >>> parse_memory("1.5G")
    1610612736
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"The memory limit must be positive, got {value!r}.")
        return value or None
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    if text in ("", "0", "NONE"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", text)
    if not m:
        raise ValueError(
            f"The memory limit must be a number of bytes or a size like '512M' or '2G', got {value!r}."
        )
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc] + proc.children(recursive=True)
    except psutil.Error:
        return []


def _pss(pid: int) -> int | None:
    # smaps_rollup: the kernel sums the process's mappings; one short read per process.
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss(pid: int) -> int | None:
    # /proc/PID/statm: no walk over the mappings (smaps_rollup walks them all: a process
    # with torch loaded has thousands, and a watcher reads it 20 times a second).
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _used(procs: list[psutil.Process], cache: dict | None = None, tick: int = 0) -> int:
    """Summed PSS of ``procs`` (RSS for a process whose PSS cannot be read).

    With a ``cache`` (pid -> (rss, pss, tick)), a process whose RSS moved by less than a
    MiB since its PSS was read, less than 20 ticks ago, counts as that PSS plus the RSS
    change: PSS is re-read when memory really moves, and at least once a second.
    """
    total = 0
    for p in procs:
        rss = _rss(p.pid) if cache is not None else None
        seen = cache.get(p.pid) if cache is not None else None
        if rss is not None and seen is not None and abs(rss - seen[0]) < 2**20 and tick - seen[2] < 20:
            total += max(0, seen[1] + rss - seen[0])
            continue
        pss = _pss(p.pid)
        if pss is None:
            try:
                pss = p.memory_info().rss
            except psutil.Error:
                continue
        if cache is not None and rss is not None:
            cache[p.pid] = (rss, pss, tick)
        total += pss
    return total


# --- cgroup v2 ----------------------------------------------------------------------------

def _own_cgroup() -> str | None:
    """This process's cgroup v2 folder, or None (no unified hierarchy mounted)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            rel = next((ln.strip()[3:] for ln in f if ln.startswith("0::")), None)
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounts = [ln.split() for ln in f]
    except OSError:
        return None
    for parts in mounts:
        fstype = parts[parts.index("-") + 1] if "-" in parts else ""
        if fstype == "cgroup2" and rel is not None:
            root, mount = parts[3], parts[4]
            inner = os.path.relpath(rel, root) if root != "/" else rel.lstrip("/")
            if inner.startswith(".."):
                continue
            return os.path.normpath(os.path.join(mount, inner))
    return None


def _memory_cgroup() -> str | None:
    """A cgroup v2 folder where this process may create groups with a memory limit, or None.

    This process's own group when the memory controller is enabled for its children
    (possible only at a root), else its parent's: a delegated subtree (systemd's
    ``Delegate=``, a container's own cgroup namespace) lets a process create siblings
    and move its children into them.
    """
    own = _own_cgroup()
    for folder in (own, os.path.dirname(own) if own else None):
        if not folder:
            continue
        try:
            with open(os.path.join(folder, "cgroup.subtree_control"), encoding="utf-8") as f:
                enabled = f.read().split()
        except OSError:
            continue
        if "memory" in enabled and os.access(folder, os.W_OK):
            return folder
    return None


class MemoryCgroup:
    """A fresh cgroup v2 group under ``parent`` whose processes share ``limit`` bytes (no swap).

    The kernel kills the whole group when it goes over (``memory.oom.group``) and counts
    that in ``memory.events``; `close` kills what is left and removes the group.
    """

    def __init__(self, parent: str, limit: int) -> None:
        self.path = tempfile.mkdtemp(prefix="ftlib-", dir=parent)
        self._peak = 0
        try:
            self._write("memory.max", str(int(limit)))
        except OSError:
            self.close()
            raise
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            with contextlib.suppress(OSError):  # no swap accounting, or an older kernel
                self._write(name, value)

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w", encoding="utf-8") as f:
            f.write(value)

    def _read(self, name: str) -> str:
        with open(os.path.join(self.path, name), encoding="utf-8") as f:
            return f.read()

    def add(self, pid: int) -> None:
        """Move ``pid`` into the group; the processes it starts afterwards are in it too."""
        self._write("cgroup.procs", str(pid))

    def current(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            self._peak = max(self._peak, int(self._read("memory.current")))
        return self._peak

    def peak(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return max(self._peak, int(self._read("memory.peak")))  # Linux 5.19+
        return self.current()

    def oom_killed(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            events = dict(ln.split() for ln in self._read("memory.events").splitlines() if ln.strip())
            return int(events.get("oom_kill", 0)) > 0
        return False

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError, ValueError):
            return [int(p) for p in self._read("cgroup.procs").split()]
        return []

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._write("cgroup.kill", "1")  # Linux 5.14+: every process in the group, at once
        for _ in range(100):
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY: its processes are still exiting
                time.sleep(0.02)


def _cgroup_for(pid: int, memory: int | None) -> MemoryCgroup | None:
    parent = _memory_cgroup() if memory is not None else None
    if parent is None:
        return None
    try:
        group = MemoryCgroup(parent, memory)
    except OSError:
        return None
    try:
        group.add(pid)
    except OSError:
        group.close()
        return None
    return group


def _pids_parent() -> str | None:
    """A cgroup folder where this process may create groups with a process limit, or None.

    cgroup v2: this process's group or its parent, with ``pids`` enabled for children;
    cgroup v1: this process's group in the ``pids`` hierarchy.
    """
    own = _own_cgroup()
    for folder in (own, os.path.dirname(own) if own else None):
        try:
            with open(os.path.join(folder, "cgroup.subtree_control"), encoding="utf-8") as f:
                if "pids" in f.read().split() and os.access(folder, os.W_OK):
                    return folder
        except (OSError, TypeError):
            continue
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                _, controllers, rel = line.rstrip("\n").split(":", 2)
                if "pids" in controllers.split(","):
                    folder = os.path.join("/sys/fs/cgroup/pids", rel.lstrip("/"))
                    if os.path.isfile(os.path.join(folder, "cgroup.procs")) and os.access(folder, os.W_OK):
                        return folder
    except (OSError, ValueError):
        pass
    return None


class PidsCgroup:
    """A fresh cgroup whose processes may number at most ``limit`` at once: a fork bomb's
    ``fork`` fails with EAGAIN in the learner's code, and the grading goes on."""

    def __init__(self, parent: str, limit: int) -> None:
        self.path = tempfile.mkdtemp(prefix="ftlib-pids-", dir=parent)
        with open(os.path.join(self.path, "pids.max"), "w", encoding="utf-8") as f:
            f.write(str(int(limit)))

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w", encoding="utf-8") as f:
            f.write(str(pid))

    def close(self) -> None:
        for _ in range(50):
            try:
                with open(os.path.join(self.path, "cgroup.procs"), encoding="utf-8") as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                return
            for p in pids:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.02)


def _pids_group_for(pid: int, processes: int | None) -> PidsCgroup | None:
    parent = _pids_parent() if processes else None
    if parent is None:
        return None
    try:
        group = PidsCgroup(parent, processes)
        group.add(pid)
    except OSError:
        with contextlib.suppress(Exception):
            group.close()
        return None
    return group


def available_memory() -> int:
    """Bytes this process can still use: the machine's available memory, or less under a cgroup limit."""
    free = psutil.virtual_memory().available
    own = _own_cgroup()
    candidates = []
    if own:
        candidates.append((os.path.join(own, "memory.max"), os.path.join(own, "memory.current")))
    candidates.append(("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    for limit_file, usage_file in candidates:
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            free = min(free, max(0, int(limit) - usage))
    return free


def default_workers(memory: int | None) -> int:
    """How many submissions to grade at once here: one per usable core, as memory allows.

    Cores are those this process may run on (CPU affinity, as set by ``taskset``, Slurm
    or a container), not all the machine's; with a per-submission limit of ``memory``
    bytes, no more workers than the available memory holds. At least 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if memory:
        cores = min(cores, available_memory() // memory)
    return max(1, cores)


def kill_tree(pid: int) -> None:
    """Kill ``pid`` and all its descendants (SIGKILL), ignoring ones already gone."""
    try:
        procs = _tree(psutil.Process(pid))
    except psutil.Error:
        return
    for p in reversed(procs):
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def run_limited(cmd: list[str], *, timeout: float | None = None, memory: int | None = None,
                poll_s: float = 0.05, **popen_kwargs) -> RunResult:
    """Run ``cmd`` and kill its process tree if it runs too long or uses too much memory.

    Parameters
    ----------
    cmd : list of str
        The command, as for `subprocess.Popen`.
    timeout : float, optional
        Wall-clock seconds before the tree is killed (``status="timeout"``).
    memory : int, optional
        Bytes the tree may use (cgroup v2 count or summed PSS) before it is killed
        (``status="memory"``).
    poll_s : float
        Seconds between two measurements.
    **popen_kwargs
        Passed to `subprocess.Popen` (``stdout``, ``env``, ``cwd``...).

    Returns
    -------
    RunResult
    """
    if timeout is not None and timeout <= 0:
        raise ValueError(f"The 'timeout' must be a positive number of seconds, got {timeout!r}.")
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    status, wall, peak = watch(proc.pid, lambda: proc.poll() is not None, timeout=timeout, memory=memory,
                               poll_s=poll_s)
    proc.wait()
    return RunResult(status, proc.returncode, wall, peak)


def watch(pid: int, finished, *, timeout: float | None = None, memory: int | None = None,
          processes: int | None = None, poll_s: float = 0.05) -> tuple[str, float, int]:
    """Watch the running process ``pid`` until ``finished()`` is true or a limit is hit.

    On a limit the whole tree is killed. Returns ``(status, wall_s, peak)`` with
    ``status`` one of ``"exited"``, ``"timeout"``, ``"memory"``, ``"processes"`` and
    ``peak`` the most memory the tree used (the cgroup's count, or summed PSS).
    ``processes`` caps the tree's processes at once: a cgroup's ``pids.max`` where one
    can be made (a fork beyond it fails and the run goes on), else the tree is killed
    when a poll finds more.
    """
    start = time.monotonic()
    root = psutil.Process(pid)
    pids_group = _pids_group_for(pid, processes)
    group = _cgroup_for(pid, memory)
    peak, procs, tick, pss_cache = 0, [root], 0, {}
    status = "exited"
    try:
        while not finished():
            # Listing children is the costly part: every 10th tick; memory is read every tick.
            if tick % 10 == 0 and (group is None or (processes and pids_group is None)):
                procs = _tree(root) or procs
            if group is not None:
                used = group.current()
                over = group.oom_killed()
            else:
                used = _used(procs, pss_cache, tick)
                over = memory is not None and used > memory
            tick += 1
            peak = max(peak, used)
            if processes and pids_group is None and len(procs) > processes:
                status = "processes"
            elif over:
                status = "memory"
            elif timeout is not None and time.monotonic() - start > timeout:
                status = "timeout"
            if status != "exited":
                kill_tree(pid)
                break
            time.sleep(poll_s)
        if group is not None:
            peak = max(peak, group.peak())
            if status == "exited" and group.oom_killed():
                status = "memory"  # the kernel killed the group between two polls
    finally:
        if group is not None:
            group.close()  # also whatever the tree left behind
        if pids_group is not None:
            pids_group.close()
    # Grandchildren that outlive a finished parent (a stray kernel) must not linger.
    if status == "exited":
        for p in procs[1:]:
            try:
                p.kill()
            except psutil.Error:
                pass
    return status, time.monotonic() - start, peak
