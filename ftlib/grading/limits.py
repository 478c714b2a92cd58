"""Run a command with a wall-clock limit and a memory limit on its whole process tree.

Used by `ftlib check` (one runner process) and `ftlib grade` (one worker per
submission). Memory is the summed resident set size (RSS) of the process and all its
descendants, polled with psutil, and the tree is killed when it goes over. RLIMIT_AS is
not used on purpose: torch reserves far more address space than it touches, so an
address-space limit breaks ``import torch`` long before real memory runs out.
Polling can overshoot by what the tree allocates in one interval (0.05 s).
"""
from __future__ import annotations

import re
import subprocess
import time
from typing import NamedTuple

import psutil

__all__ = ["RunResult", "run_limited", "watch", "parse_memory", "kill_tree"]

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class RunResult(NamedTuple):
    """How a limited run ended: ``status`` is ``"exited"``, ``"timeout"`` or ``"memory"``."""

    status: str
    returncode: int | None
    wall_s: float
    peak_rss: int


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


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


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
        Bytes of summed RSS before the tree is killed (``status="memory"``).
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
          poll_s: float = 0.05) -> tuple[str, float, int]:
    """Watch the running process ``pid`` until ``finished()`` is true or a limit is hit.

    On a limit the whole tree is killed. Returns ``(status, wall_s, peak_rss)`` with
    ``status`` one of ``"exited"``, ``"timeout"``, ``"memory"``.
    """
    start = time.monotonic()
    root = psutil.Process(pid)
    peak, procs, tick = 0, [root], 0
    status = "exited"
    while not finished():
        if tick % 10 == 0:  # listing children is the costly part; memory is read every tick
            procs = _tree(root) or procs
        tick += 1
        rss = _rss(procs)
        peak = max(peak, rss)
        if memory is not None and rss > memory:
            status = "memory"
        elif timeout is not None and time.monotonic() - start > timeout:
            status = "timeout"
        if status != "exited":
            kill_tree(pid)
            break
        time.sleep(poll_s)
    # Grandchildren that outlive a finished parent (a stray kernel) must not linger.
    if status == "exited":
        for p in procs[1:]:
            try:
                p.kill()
            except psutil.Error:
                pass
    return status, time.monotonic() - start, peak
