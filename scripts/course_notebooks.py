"""The repository's course notebooks: where they are, run them, validate them.

Repository-only: it knows the layout (``solutions/``, ``course/``), so it lives here and not in
the installed ftlib package. Used by tests/course, scripts/measure_notebooks.py and
bench/course (which put ``scripts/`` on ``sys.path``).

* :func:`run_notebook` executes a notebook headless with nbclient in a fresh kernel and
  reports wall time and the kernel's peak memory (``VmHWM``, read by an extra cell).
* :func:`validate_notebook` runs nbgrader's own :class:`nbgrader.validator.Validator`, the
  code behind the Validate button: ``invert=False`` lists failing grade cells (a solution
  notebook must have none), ``invert=True`` lists passing ones (a release notebook must
  have none). Use it rather than the ``nbgrader validate`` command, which exits 0 even
  when validation fails.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from pathlib import Path

__all__ = ["ROOT", "assignments", "solution_notebook", "release_notebook", "run_notebook", "executed_solution",
           "validate_notebook",
           "errors", "grade_cell_outputs"]

ROOT = Path(__file__).resolve().parents[1]

# The kernel's own peak (VmHWM): ru_maxrss would also keep the peak of the process that
# started it, which it inherits across fork and exec (a large test process, say).
_PEAK_CELL = ("import resource as _r\n"
              "try:\n"
              "    _p = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
              "except (OSError, IndexError):\n"
              "    _p = _r.getrusage(_r.RUSAGE_SELF).ru_maxrss\n"
              "import sys as _s\n"
              "_s.stdout.write(f'FTLIB_PEAK_KB={_p}\\n')\n"
              "_s.stdout.flush()")


def assignments() -> list[str]:
    """Assignment names that have a solution notebook, in course order."""
    base = ROOT / "solutions"
    return sorted(p.name for p in base.iterdir() if (p / f"{p.name}.ipynb").exists()) if base.exists() else []


def solution_notebook(name: str) -> Path:
    return ROOT / "solutions" / name / f"{name}.ipynb"


def release_notebook(name: str) -> Path:
    return ROOT / "course" / name / f"{name}.ipynb"


# What binder/start sets that decides a kernel's memory: the allocator (TCMalloc where the
# system has it) and oneDNN's kernel cache. The 1.5 GB budget is Binder's, so notebooks are
# measured under Binder's settings, taken from the script itself; its other settings (quiet
# warnings among them) are left out, so that the checks still see every warning.
BINDER_MEMORY_SETTINGS = ("LD_PRELOAD", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


@functools.lru_cache(maxsize=None)
def binder_memory_env() -> dict:
    """The values ``binder/start`` gives :data:`BINDER_MEMORY_SETTINGS` on this machine."""
    import subprocess

    clean = {k: v for k, v in os.environ.items() if k not in BINDER_MEMORY_SETTINGS}
    out = subprocess.run(["bash", str(ROOT / "binder" / "start"), "env", "-0"], env=clean, check=True,
                         capture_output=True, text=True).stdout
    pairs = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: pairs[k] for k in BINDER_MEMORY_SETTINGS if k in pairs}


@contextlib.contextmanager
def _course_env(extra: dict | None = None):
    """Offline, quiet settings for a notebook kernel, with Binder's allocator and oneDNN cache
    (:func:`binder_memory_env`); the previous environment comes back."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg", "PYDEVD_DISABLE_FILE_VALIDATION": "1", **binder_memory_env(), **(extra or {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(path: str | os.PathLike, *, timeout: int = 600, env: dict | None = None, allow_errors: bool = False):
    """Execute ``path`` in a fresh kernel; return ``(notebook, seconds, peak_mb)``.

    ``env`` adds environment variables (``{"NBGRADER_EXECUTION": "autograde"}`` selects
    the notebooks' small grading budget). The notebook file is not modified.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_PEAK_CELL))
    with _course_env(env):
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - start
    peak_kb = peak_kb_from(nb.cells.pop().get("outputs", []))
    return nb, seconds, peak_kb / 1024


def peak_kb_from(outputs: list) -> int:
    """The peak the last cell printed. The kernel may split one write over several stream
    messages (CI once saw 'FTLIB_PEAK_KB' and the number arrive apart), so join them first."""
    text = "".join(out.get("text", "") for out in outputs if out.get("name") == "stdout")
    found = re.search(r"FTLIB_PEAK_KB[= ]+(\d+)", text)
    if found is None:
        raise RuntimeError(f"the notebook's last cell did not print its peak memory; it printed {text!r}")
    return int(found.group(1))


@functools.lru_cache(maxsize=None)
def executed_solution(name: str, timeout: int = 900):
    """:func:`run_notebook` of ``name``'s solution notebook, once per process.

    The tests that read an executed run (no errors, memory, the numbers it prints)
    share it: each full run of a course notebook takes one to three minutes. Read the
    notebook it returns; do not change it.
    """
    return run_notebook(solution_notebook(name), timeout=timeout)


def errors(nb) -> list[str]:
    """Error outputs of an executed notebook, as 'cell N: Error: message'."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out['ename']}: {out['evalue']}")
    return found


def grade_cell_outputs(nb) -> dict[str, list]:
    """``{grade_id: outputs}`` of the grade cells of an executed notebook."""
    return {c.metadata["nbgrader"]["grade_id"]: c.get("outputs", []) for c in nb.cells
            if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c.cell_type == "code"}


def validate_notebook(path: str | os.PathLike, *, invert: bool = False, timeout: int = 600) -> dict:
    """nbgrader's validation result for ``path`` (an empty dict means it validated).

    The notebook runs with ``NBGRADER_EXECUTION=validate``, as under the Validate button.
    """
    from nbgrader.validator import Validator
    from traitlets.config import Config

    config = Config()
    config.Validator.invert = invert
    config.Execute.timeout = timeout
    with _course_env():
        return Validator(config=config).validate(str(path))
