"""One submission graded in its own worker process, under a time and memory limit.

`grade` calls :func:`grade_one` from a thread for each submission; a Dask worker
(`cluster`) calls it too. The worker is forked from a fork server that imported nbgrader
once (`_preload`), or, inside a daemonic process, started as a fresh interpreter running
`autograde`. :func:`worker_env` is the environment each worker gets on this machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from ftgrade.gradebook import with_venv_path
from ftgrade.limits import run_limited, watch

__all__ = ["grade_one", "failed_run", "start_fork_server", "worker_env", "THREAD_VARIABLES"]


def _forked_worker(spec_path: str, log_path: str, env: dict[str, str]) -> None:
    """Body of a worker forked from the fork server: nbgrader is already imported."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(os.path.dirname(spec_path))
    from ftgrade.autograde import main

    main([spec_path])


_CONTEXT: list = []


def _fork_context():
    # One fork server per grading process imports nbgrader once (about 3 s of CPU); each
    # submission is then a cheap fork of it rather than a fresh interpreter.
    import multiprocessing as mp

    if not _CONTEXT:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["ftgrade._preload"])
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def start_fork_server() -> None:
    from multiprocessing import forkserver

    _fork_context()
    forkserver.ensure_running()


_LOG_BYTES = 1 << 20  # of a worker's log, the end is kept: learner code can write to it without end


def grade_one(job: dict[str, Any]) -> dict[str, Any]:
    """Grade one submission in a worker forked under limits; return everything it produced.

    Called in a thread of the grading process, or in a Dask worker (`cluster`). The
    returned dict holds no path into the worker's folder: ``run`` (how the worker ended),
    ``result`` (its result.json, or None), ``files`` (the autograded notebooks and
    feedback pages, as text) and ``log`` (the end of its log).
    """
    out_dir = job["spec"]["output_dir"]
    spec_path = os.path.join(out_dir, "spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(job["spec"], f)
    log_path = os.path.join(out_dir, "worker.log")
    import multiprocessing as mp

    if mp.current_process().daemon:
        # A daemonic process (a Dask worker under its nanny) may not start multiprocessing
        # children: run the worker as a fresh interpreter instead of a fork.
        with open(log_path, "wb") as logf:
            r = run_limited([sys.executable, "-m", "ftgrade.autograde", spec_path], timeout=job["timeout"],
                            memory=job["memory"], stdout=logf, stderr=subprocess.STDOUT, env=job["env"],
                            cwd=out_dir)
        status, wall, peak, exitcode = r.status, r.wall_s, r.peak_rss, r.returncode
    else:
        proc = _fork_context().Process(target=_forked_worker, args=(spec_path, log_path, job["env"]))
        proc.start()
        status, wall, peak = watch(proc.pid, lambda: not proc.is_alive(), timeout=job["timeout"],
                                   memory=job["memory"], processes=job.get("processes"))
        proc.join()
        exitcode = proc.exitcode
    run = {"status": status, "returncode": exitcode, "wall_s": wall, "peak_rss": peak}
    result_path = os.path.join(out_dir, "result.json")
    result = None
    if status == "exited" and os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
    files: dict[str, dict[str, str]] = {}
    for kind in ("autograded", "feedback"):
        folder = os.path.join(out_dir, kind)
        if os.path.isdir(folder):
            files[kind] = {}
            for name in sorted(os.listdir(folder)):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    files[kind][name] = f.read()
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - _LOG_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        text = ""
    return {"student": job["student"], "hash": job["hash"], "run": run, "result": result, "files": files, "log": text}


def failed_run(job: dict[str, Any], error: BaseException) -> dict[str, Any]:
    """What `grade_one` would have returned had its worker failed with ``error`` before grading."""
    return {"student": job["student"], "hash": job["hash"], "result": None, "files": {},
            "run": {"status": "exited", "returncode": None, "wall_s": 0.0, "peak_rss": 0},
            "log": f"{type(error).__name__}: {error}"}


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_env(workers: int) -> dict[str, str]:
    """The environment of a grading worker on this machine, one of ``workers`` at once here."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(with_venv_path(dict(os.environ)), PYTHONPATH=os.pathsep.join(
        [pkg_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.update(TQDM_MININTERVAL="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(_thread_limits(workers, os.environ))
    return env


def _thread_limits(workers: int, environ) -> dict[str, str]:
    """Thread counts for each kernel so that ``workers`` kernels share the cores.

    PyTorch and the BLAS libraries start one thread per core in every kernel; with two
    workers on two cores that is four busy threads fighting for two cores. Each kernel
    gets ``cores // workers`` threads (at least 1) unless the instructor set a value.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(max(1, cores // max(1, workers)))
    return {name: environ.get(name, threads) for name in THREAD_VARIABLES}
