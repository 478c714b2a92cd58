"""`ftlib grade --scheduler ADDRESS`: grade a class on a Dask cluster, one task per submission.

The grading process (`grade`) does everything but run the notebooks: it reads the
course, builds the assignment's template gradebook, decides what to grade, and stores
every result (gradebook, CSV, feedback) itself, so the gradebook has one writer however
many machines grade. Each submission becomes one Dask task, `grade_task`, which carries
the submission's files, while the template gradebook and the assignment's support files
are sent once to every worker. On the worker that receives it, the task runs the same
sandboxed, time- and memory-limited grading as a local run (`worker.grade_one`) and
sends back the scores, the autograded notebooks, the feedback pages and the log. No
folder needs to be shared between the machines.

A worker checks for itself that the sandbox works there and refuses to grade without
one, unless the instructor asked for no sandbox (``--no-sandbox``): a node without
bubblewrap must not quietly run learner code unconfined.

Dask is imported only here, and this module only when a cluster is asked for.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from typing import Any, Iterator

__all__ = ["grade_on_cluster", "grade_task", "bundle_assignment", "portable_job"]

# Never copied to a worker: the notebooks (the source holds the solutions; the gradebook
# holds the grade cells) and caches.
_NOT_SENT = (".ipynb_checkpoints", "__pycache__")


def _files(folder: str, *, skip_notebooks: bool) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _NOT_SENT)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or (skip_notebooks and name.endswith(".ipynb")):
                continue
            with open(full, "rb") as f:
                out[os.path.relpath(full, folder)] = f.read()
    return out


def _unpack(files: dict[str, bytes], folder: str) -> None:
    for rel, data in files.items():
        path = os.path.normpath(os.path.join(folder, rel))
        if os.path.commonpath([path, folder]) != folder:
            raise ValueError(f"Refusing to write {rel!r} outside {folder}.")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def bundle_assignment(template_db: str, support_dir: str) -> dict[str, Any]:
    """What every worker needs once: the template gradebook and the support files."""
    with open(template_db, "rb") as f:
        template = f.read()
    support = _files(support_dir, skip_notebooks=True) if os.path.isdir(support_dir) else {}
    return {"template": template, "support": support}


def portable_job(job: dict[str, Any], use_sandbox: bool) -> dict[str, Any]:
    """A local job (`grade`) without paths of this machine: the submission travels as bytes."""
    local_only = ("submission_dir", "template_db", "support_dir", "hide", "output_dir", "tmp_root", "sandbox")
    return {"student": job["student"], "hash": job["hash"], "timeout": job["timeout"], "memory": job["memory"],
            "use_sandbox": use_sandbox, "spec": {k: v for k, v in job["spec"].items() if k not in local_only},
            "files": _files(job["spec"]["submission_dir"], skip_notebooks=False)}


def grade_task(job: dict[str, Any], bundle: dict[str, Any]) -> dict[str, Any]:
    """Run on a Dask worker: grade one submission here, sandboxed and limited; return the results."""
    from ftgrade import sandbox
    from ftgrade.autograde import runtime_dir
    from ftgrade.worker import grade_one, worker_env

    if job["use_sandbox"]:
        ok, why = sandbox.available()
        if not ok:
            raise RuntimeError(f"worker {socket.gethostname()} refuses to grade without a sandbox: {why}; "
                               "make bubblewrap work there, or grade with --no-sandbox")
    root = runtime_dir(None)  # a short path: the kernel's sockets live below it
    try:
        template = os.path.join(root, "template.db")
        with open(template, "wb") as f:
            f.write(bundle["template"])
        support, sub, out = (os.path.join(root, d) for d in ("source", "submission", "out"))
        for folder, files in ((support, bundle["support"]), (sub, job["files"])):
            os.makedirs(folder)
            _unpack(files, folder)
        os.makedirs(out)
        spec = dict(job["spec"], submission_dir=sub, template_db=template, support_dir=support,
                    sandbox=bool(job["use_sandbox"]), hide=[], output_dir=out, tmp_root=out)
        local = {"student": job["student"], "hash": job["hash"], "spec": spec, "timeout": job["timeout"],
                 "memory": job["memory"], "env": worker_env(_threads_here())}
        return grade_one(local)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _threads_here() -> int:
    # The kernels of one Dask worker share its cores: as many at once as it has threads.
    with contextlib.suppress(Exception):
        from distributed import get_worker

        return get_worker().state.nthreads
    return 1


def _failed(job: dict[str, Any], error: BaseException) -> dict[str, Any]:
    return {"student": job["student"], "hash": job["hash"], "result": None, "files": {},
            "run": {"status": "exited", "returncode": None, "wall_s": 0.0, "peak_rss": 0},
            "log": f"{type(error).__name__}: {error}"}


@contextlib.contextmanager
def _client(scheduler: str, workers: int):
    from distributed import Client, LocalCluster

    if scheduler == "local":
        import dask

        # Dask's own memory manager is off: each submission has its own limit. Non-daemonic
        # worker processes may fork graders from a warmed fork server, as a local run does.
        with dask.config.set({"distributed.worker.daemon": False}), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, memory_limit=0) as cluster, Client(cluster) as client:
            yield client
    else:
        with Client(scheduler, timeout="20s") as client:
            yield client


def grade_on_cluster(jobs: list[dict[str, Any]], *, scheduler: str, workers: int, template_db: str,
                     support_dir: str, use_sandbox: bool, log) -> Iterator[dict[str, Any]]:
    """Grade ``jobs`` (as built by `grade`) on a Dask cluster; yield each result as it arrives.

    ``scheduler`` is a scheduler address (``tcp://HOST:8786``) or ``"local"`` for a
    cluster of ``workers`` processes on this machine.
    """
    from distributed import as_completed

    with _client(scheduler, workers) as client:
        info = client.scheduler_info()
        threads = sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())
        log(f"Dask cluster at {client.scheduler.address}: {len(info.get('workers', {}))} worker(s), "
            f"{threads} thread(s).")
        bundle = client.scatter(bundle_assignment(template_db, support_dir), broadcast=True)
        futures, batch = {}, uuid.uuid4().hex[:8]  # keys unique to this run: a scheduler outlives it
        for job in jobs:
            future = client.submit(grade_task, portable_job(job, use_sandbox), bundle, pure=False,
                                   key=f"ftlib-grade-{batch}-{len(futures)}")
            futures[future] = job
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as e:  # a refusing worker, a lost one: this submission fails, the batch goes on
                yield _failed(futures[future], e)
