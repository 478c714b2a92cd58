"""The fresh process behind `ftlib check`: load the learner's code, run each grade cell.

Started as ``python -m ftgrade._runner SPEC.json RESULTS.jsonl`` by `check`.
It imports the modules the checks use and records them (`guard.install`) before any
learner code runs, executes the setup and solution cells in notebook order, then runs
every grade cell in a forked child: a grade cell cannot see another's side effects,
one that hangs or kills its process costs only itself, and monkeypatches are undone
(`guard.restore`) before each. Results are appended as JSON lines so the parent still
learns how far it got if this process is killed. Learner output goes to a log file;
output on stderr is never a failure, only exceptions are.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback

from ftgrade import guard


def _emit(out, **record) -> None:
    out.write(json.dumps(record) + "\n")
    out.flush()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _learner_line(exc: BaseException, filename_prefix: str) -> str:
    # Point at the learner's own cell line, the one useful frame for a syntax or runtime error.
    if isinstance(exc, SyntaxError):
        return f" (line {exc.lineno})" if exc.lineno else ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith(filename_prefix):
            return f" ({frame.filename.strip('<>')}, line {frame.lineno})"
    return ""


def _run_grade_cell(cell: dict, ns: dict, timeout: float, out) -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the parent's loop
        os.close(read_fd)
        restored: list[str] = []
        try:
            restored = guard.restore()
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)  # OpenMP pools do not survive fork
            exec(compile(cell["source"], f"<grade cell {cell['grade_id']}>", "exec"), dict(ns))
            result = {"status": "pass", "message": ""}
            if restored:
                result["message"] = "note: undid changes to " + ", ".join(restored)
        except BaseException as e:  # SystemExit and KeyboardInterrupt are failures too
            result = {"status": "fail", "message": _describe(e), "traceback": traceback.format_exc()}
        result["restored"] = restored
        try:
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    start, status = time.monotonic(), None
    while True:
        done, wstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = {"status": "fail", "message": f"timed out after {timeout:g} s (an endless loop?)"}
            break
        time.sleep(0.01)
    with os.fdopen(read_fd, "rb") as r:
        data = r.read()
    if status is None:
        if data:
            status = json.loads(data)
        else:
            code = os.waitstatus_to_exitcode(wstatus)
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            status = {"status": "fail", "message": f"the process running the check died ({how}); "
                      "does your code call os._exit, sys.exit or crash the interpreter?"}
    _emit(out, event="grade", grade_id=cell["grade_id"], points=cell["points"],
          seconds=round(time.monotonic() - start, 3), **status)


def _modules_to_watch(watched: list[str], maybe: list[str]) -> list[str]:
    """``watched``, the names in ``maybe`` that are modules, and the checks' ``PRELOAD``.

    Importing them here, before any learner code, puts them under the guard. Every grade
    cell runs in a fresh fork, so a library that a check imports only when it runs
    (transformers, for a tiny BERT) would otherwise be imported again in every cell:
    ~3 s each. A check module names such libraries in ``PRELOAD``.
    """
    modules = list(watched)
    for name in maybe:
        try:
            importlib.import_module(name)
        except ImportError:  # `from pkg import function`: not a module
            continue
        modules.append(name)
    for name in list(modules):
        mod = sys.modules.get(name)
        modules += list(getattr(mod, "PRELOAD", ())) if mod is not None else []
    return list(dict.fromkeys(modules))


def prepare(modules: list[str]) -> None:
    """Call the ``PREPARE`` functions of the imported ``modules`` once, before learner code.

    A check module names in ``PREPARE`` the zero-argument, cached builders of what its
    checks share (09's tiny Llama trained to reply "ok", ~1 s): built here, every grade
    cell's fork inherits it instead of building it again, and no learner code has run yet.
    """
    for name in modules:
        mod = sys.modules.get(name)
        for function in getattr(mod, "PREPARE", ()) if mod is not None else ():
            try:
                getattr(mod, function)()
            except Exception:  # only a speed-up: the check that needs it builds it and reports
                pass


class LoadTimeout(Exception):
    """Running one setup or solution cell took longer than the time limit."""


def _on_alarm(signum, frame):
    raise LoadTimeout("this cell took too long to run (an endless loop or training at top level?)")


def main(argv: list[str]) -> int:
    spec_path, results_path = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("cwd"):
        os.chdir(spec["cwd"])
        sys.path.insert(0, spec["cwd"])
    sys.path[1:1] = spec.get("path", [])
    with open(results_path, "a", encoding="utf-8") as out:
        start = time.monotonic()
        modules = _modules_to_watch(spec["watched"], spec.get("maybe_modules", []))
        failed = guard.install(modules)
        _emit(out, event="guard", not_importable=failed, seconds=round(time.monotonic() - start, 3))
        start = time.monotonic()
        prepare(modules)
        _emit(out, event="prepare", seconds=round(time.monotonic() - start, 3))
        ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
        signal.signal(signal.SIGALRM, _on_alarm)
        for cell in spec["load"]:
            label = f"{cell['kind']} cell {cell['label']}"
            signal.setitimer(signal.ITIMER_REAL, spec["timeout"])
            start = time.monotonic()
            try:
                exec(compile(cell["source"], f"<{label}>", "exec"), ns)
            except BaseException as e:
                _emit(out, event="load", label=label, status="fail", seconds=round(time.monotonic() - start, 3),
                      message=_describe(e) + _learner_line(e, f"<{cell['kind']} cell"))
            else:
                _emit(out, event="load", label=label, status="ok", seconds=round(time.monotonic() - start, 3))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        for cell in spec["grade"]:
            _run_grade_cell(cell, ns, spec["timeout"], out)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Every result is written and flushed. Skip the interpreter's teardown: with torch and
    # transformers loaded it takes about a second of a cold check, and it would run atexit
    # handlers that learner code registered (one that hangs would hold the check until its
    # time limit). The warm server's forks end the same way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
