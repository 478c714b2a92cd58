"""Autograde ONE submission with nbgrader, in a private temporary course: the worker.

`grade` forks one worker per submission from a fork server that has imported and warmed
this module (`prewarm`), and runs it under a wall-clock and memory limit; ``python -m
ftlib.grading.autograde SPEC.json`` does the same by hand. The worker builds a
throw-away course directory (a gradebook holding only this assignment, the submission,
the assignment's support files), runs nbgrader's own `Autograde` converter on it (grade
cells, points and kernelspec are restored from the gradebook, hidden tests run,
duplicate ids dropped, deleted grade cells re-added) and writes ``result.json``, the
autograded notebooks and HTML feedback into the spec's output directory. It never
touches the real gradebook: the parent does that.

Two nbgrader preprocessors are replaced by subclasses:

- `GradingExecute` starts the kernel through `sandbox.wrap` (an allow-list: no network,
  no home, no course folder, and a working directory that holds the support files but
  not the notebook, whose grade cells hold the hidden tests), keeps at most ``max_output_bytes`` of output per cell while
  it runs, undoes monkeypatching (`guard.restore`) before each grade cell, and turns a
  dead kernel into error outputs for the remaining cells instead of aborting.
- `LenientSaveAutoGrades` scores like nbgrader but ignores output on stderr: a warning
  or a tqdm bar in a correct answer must not cost the points.

What a submission costs is mostly starting its kernel and nbgrader's bookkeeping, so
the kernel starts without a history database or the debugger (`ftlib.grading._kernel`),
and nbgrader's gradebooks in one worker share one SQLAlchemy engine.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import traceback
import uuid
from typing import Any

if "jsonschema" not in sys.modules:
    # jsonschema imports rfc3987_syntax, if installed, to check the "iri" format, which no
    # notebook schema uses; it compiles its grammars at import, about 5 s per process.
    sys.modules.setdefault("rfc3987_syntax", None)  # None: "import" raises ImportError, which jsonschema skips

from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import DeadKernelError
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbformat.notebooknode import NotebookNode
from nbgrader import utils as nbutils
from nbgrader.preprocessors import (
    AssignLatePenalties, CheckCellMetadata, Execute, IgnorePattern, LimitOutput, SaveAutoGrades)
from traitlets import Integer, List, Unicode

from ftlib.grading import sandbox
from ftlib.grading.feedback import error_summary, render_feedback
from ftlib.grading.notebook import NotebookError, duplicate_cell_ids, read_notebook

__all__ = ["NO_NOTEBOOK", "autograde_submission", "prewarm", "GradingExecute", "LenientSaveAutoGrades", "SandboxKernelManager"]

NO_NOTEBOOK = "nbgrader produced no autograded notebook"
# What the kernel-side hooks observed, per notebook file name: filled while nbgrader runs.
_events: dict[str, dict[str, Any]] = {}
_GUARD_EXPR = "__import__('ftlib.grading.guard', fromlist=['restore_report']).restore_report()"


def _notebook_events(resources: dict) -> dict[str, Any]:
    name = resources.get("nbgrader", {}).get("notebook", "?")
    return _events.setdefault(name, {"restored": {}, "truncated": [], "died_in": None, "timeouts": [],
                                     "memory_errors": []})


def _without_debugger(cmd: list[str]) -> list[str]:
    """``python -m ipykernel_launcher ...`` becomes ``python -m ftlib.grading._kernel ...``."""
    for i in range(len(cmd) - 1):
        if cmd[i] == "-m" and cmd[i + 1] == "ipykernel_launcher":
            return [*cmd[:i + 1], "ftlib.grading._kernel", *cmd[i + 2:]]
    return cmd  # another kind of kernel: run it as it is


class SandboxKernelManager(AsyncKernelManager):
    """A kernel manager that launches the kernel inside `sandbox.wrap` when enabled."""

    sandbox_hide = List(Unicode()).tag(config=True)
    sandbox_home = Unicode("").tag(config=True)  # shown at the kernel's cwd instead of the notebook folder
    sandbox_enabled = Unicode("").tag(config=True)  # "1" to wrap

    def __init__(self, **kwargs):
        # The sandbox shares no network with us, but Unix sockets work; their path must be
        # absolute, as the kernel runs in another working directory.
        from jupyter_core.paths import jupyter_runtime_dir

        name = os.path.join(jupyter_runtime_dir(), f"kernel-{uuid.uuid4().hex[:12]}")
        kwargs.setdefault("transport", "ipc")
        kwargs.setdefault("ip", name + "-ipc")
        kwargs.setdefault("connection_file", name + ".json")
        super().__init__(**kwargs)

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = _without_debugger(super().format_kernel_cmd(extra_arguments))
        if not self.sandbox_enabled:
            return cmd
        # Interrupt through the control channel: a SIGINT to the process group would also
        # hit bwrap, and its death takes the kernel with it (--die-with-parent).
        self.kernel_spec.interrupt_mode = "message"
        cwd = (self._launch_args or {}).get("cwd") or os.getcwd()
        home = self.sandbox_home
        os.makedirs(home, exist_ok=True)
        for name in os.listdir(cwd):  # support files (data, helper modules), not the notebooks
            src = os.path.join(cwd, name)
            if name.endswith(".ipynb") or os.path.islink(src):
                continue
            dst = os.path.join(home, name)
            if os.path.isdir(src):
                shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.ipynb"))
            else:
                shutil.copy2(src, dst)
        runtime = os.path.dirname(os.path.realpath(self.connection_file))
        # In its own pid namespace the kernel's parent is pid 1, which ipykernel reads as "my
        # parent died" unless told that 1 is expected; --die-with-parent covers a dead worker.
        env = sandbox.kernel_env(os.environ, JPY_PARENT_PID="1", IPYTHONDIR="/tmp/.ipython",
                                 MPLCONFIGDIR="/tmp/.matplotlib")
        # The same working directory for every submission and machine, so that tracebacks in
        # feedback are the same wherever it was graded, and name no folder of the grader's.
        inside = sandbox.WORKDIR + "/" + os.path.basename(cwd)
        return sandbox.wrap(cmd, hide=list(self.sandbox_hide), writable=[runtime, (home, inside)], cwd=inside,
                            env=env, scratch=os.path.dirname(home))


class GradingExecute(Execute):
    """nbgrader's Execute with a sandboxed kernel, bounded output and tamper repair."""

    max_output_bytes = Integer(1_000_000, help="Output kept per cell while it runs.").tag(config=True)
    watched_modules = List(Unicode(), help="Modules restored before each grade cell.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._events = _notebook_events(resources or {})
        self._out_bytes: dict[int, int] = {}
        self._dead_at = None
        install = f"__import__('ftlib.grading.guard', fromlist=['install']).install({list(self.watched_modules)!r})"
        # No history database: nothing reads it, and creating it costs each kernel start 0.05 s.
        self.extra_arguments = [f"--IPKernelApp.exec_lines={install}", "--HistoryManager.enabled=False"]
        return super().preprocess(nb, resources, km)

    def _restore_checks(self) -> list[str]:
        msg_id = self.kc.execute("", silent=False, store_history=False, user_expressions={"r": _GUARD_EXPR})
        reply = self.wait_for_reply(msg_id)
        expr = ((reply or {}).get("content", {}).get("user_expressions") or {}).get("r", {})
        if expr.get("status") != "ok":
            return [f"(guard unavailable: {expr.get('ename', 'no reply')})"]
        text = expr.get("data", {}).get("text/plain", "''").strip("'\"")
        return [t for t in text.split(",") if t]

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        if self._dead_at is not None:
            cell.outputs = [NotebookNode(output_type="error", ename="KernelDied", traceback=[],
                                         evalue=f"not run: the kernel died in cell {self._dead_at}")]
            return cell, resources
        try:
            if nbutils.is_grade(cell):
                restored = self._restore_checks()
                if restored:
                    self._events["restored"][cell.metadata.nbgrader["grade_id"]] = restored
            cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._dead_at = index
            self._events["died_in"] = index
            cell.outputs = list(cell.get("outputs", [])) + [NotebookNode(
                output_type="error", ename="KernelDied", traceback=[],
                evalue="the kernel died while running this cell (os._exit, a crash, or killed)")]
        if any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", [])):
            self._events["timeouts"].append(index)
        if any(o.get("ename") == "MemoryError" for o in cell.get("outputs", [])):
            gid = (cell.metadata.get("nbgrader") or {}).get("grade_id")
            self._events["memory_errors"].append(f"{index} ({gid})" if gid else str(index))
        return cell, resources

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(str(content.get("text", ""))) + sum(len(str(v)) for v in (content.get("data") or {}).values())
        used = self._out_bytes.get(cell_index, 0)
        self._out_bytes[cell_index] = used + size
        if msg.get("msg_type") != "error" and used + size > self.max_output_bytes:
            if used <= self.max_output_bytes:
                self._events["truncated"].append(cell_index)
                outs.append(NotebookNode(output_type="stream", name="stdout",
                                         text=f"\n... output truncated by ftlib grade after {self.max_output_bytes} bytes ...\n"))
            return None
        return super().output(outs, msg, display_id, cell_index)


class LenientSaveAutoGrades(SaveAutoGrades):
    """SaveAutoGrades that does not turn output on stderr into a score of zero."""

    def _add_score(self, cell, resources):
        outputs = cell.get("outputs")
        if outputs is not None:
            cell.outputs = [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        try:
            super()._add_score(cell, resources)
        finally:
            if outputs is not None:
                cell.outputs = outputs


def _prepare_notebook(path: str) -> tuple[str, str]:
    """Check that ``path`` is a readable notebook; repair duplicate cell ids in place."""
    import nbformat

    try:
        nb = read_notebook(path)
        parsed = nbformat.reads(json.dumps(nb), as_version=4)
    except NotebookError as e:
        return "invalid notebook", str(e).replace(os.path.dirname(path) + os.sep, "")
    except Exception as e:  # nbformat's own complaints (bad nbformat version, schema)
        return "invalid notebook", f"{os.path.basename(path)} is not a valid notebook: {e}"
    notes = []
    # nbgrader's DeduplicateIds keeps the last cell of a grade_id and empties the others'
    # metadata, which its own OverwriteCells(add_missing_cells=True) then trips over.
    # Do the same choice here, but drop the metadata key entirely.
    seen_ids: set = set()
    for cell in reversed(parsed.cells):
        gid = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
        if gid and gid in seen_ids:
            del cell.metadata["nbgrader"]
            notes.append(f"duplicate cell {gid!r} ignored")
        elif gid:
            seen_ids.add(gid)
    dups = duplicate_cell_ids(nb)
    if dups or any("id" not in c for c in parsed.cells):
        seen = set()
        for cell in parsed.cells:
            if cell.get("id") in seen or "id" not in cell:
                cell["id"] = uuid.uuid4().hex[:8]
            seen.add(cell["id"])
        if dups:
            notes.append(f"duplicate cell ids repaired: {', '.join(dups)}")
    parsed.nbformat_minor = max(parsed.get("nbformat_minor", 5), 5)
    nbformat.write(parsed, path)
    return "ok", "; ".join(notes)


def _collect(course: str, spec: dict[str, Any], statuses: dict[str, tuple[str, str]]) -> dict[str, Any]:
    from nbgrader.api import Gradebook, MissingEntry

    assignment, student = spec["assignment"], spec["student"]
    result: dict[str, Any] = {"notebooks": {}, "timestamp": None}
    with Gradebook(f"sqlite:///{os.path.join(course, 'gradebook.db')}") as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            sub = None
        result["timestamp"] = sub.timestamp.isoformat() if sub is not None and sub.timestamp else None
        for name in spec["notebooks"]:
            status, message = statuses.get(name, ("ok", ""))
            path = os.path.join(course, "autograded", student, assignment, f"{name}.ipynb")
            nb = None
            if status == "ok" and os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    nb = json.load(f)
            elif status == "ok":
                status, message = "crashed", NO_NOTEBOOK
            cells = {}
            if nb is not None:
                for cell in nb["cells"]:
                    gid = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
                    if gid:
                        cells[gid] = cell
            events = _events.get(name, {})
            grades, penalty, db_grades, comments = [], 0.0, {}, {}
            try:
                snb = gb.find_submission_notebook(name, assignment, student)
            except MissingEntry:
                snb = None
            if snb is not None:
                penalty = snb.late_submission_penalty or 0.0
                db_grades = {g.name: g for g in snb.grades}
                comments = {c.name: c.auto_comment for c in snb.comments}
            # In notebook order (cells holds them in that order), then by name: the same on every
            # run, where the gradebook's ids are random.
            order = {gid: i for i, gid in enumerate(cells)}
            for gc in sorted(gb.find_notebook(name, assignment).grade_cells,
                             key=lambda c: (order.get(c.name, len(order)), c.name)):
                g = db_grades.get(gc.name)
                score = g.auto_score if (g is not None and nb is not None) else 0.0
                msg = error_summary(cells[gc.name].get("outputs", [])) if gc.name in cells else ""
                if msg.startswith("CellTimeoutError"):
                    msg = f"timed out after {spec['cell_timeout']} s"
                restored = events.get("restored", {}).get(gc.name)
                if restored:
                    msg = (msg + "; " if msg else "") + "tampering undone: " + ", ".join(restored)
                grades.append({"grade_id": gc.name, "score": score, "max_score": gc.max_score, "message": msg})
            if nb is not None:
                if events.get("died_in") is not None:
                    status, message = "crashed", f"the kernel died in cell {events['died_in']}"
                elif events.get("memory_errors"):
                    status = "memory"
                    message = f"MemoryError in cell(s) {', '.join(events['memory_errors'])}"
                elif events.get("timeouts"):
                    status = "timeout"
                    message = f"cell(s) {', '.join(map(str, events['timeouts']))} timed out after {spec['cell_timeout']} s"
                for gid, restored in events.get("restored", {}).items():
                    message = (message + "; " if message else "") + f"tampering undone before {gid}: " + \
                        ", ".join(restored)
                if events.get("truncated"):
                    message = (message + "; " if message else "") + "output truncated in cell(s) " + \
                        ", ".join(map(str, events["truncated"]))
            result["notebooks"][name] = {"status": status, "message": message, "grades": grades,
                                         "late_penalty": penalty, "comments": comments, "nb": nb}
    return result


@contextlib.contextmanager
def _one_engine_per_database():
    """Let nbgrader's many `Gradebook` objects in this worker share one SQLAlchemy engine per URL.

    Autograde opens the gradebook about ten times per notebook, and each new engine
    compiles every SQL statement again (SQLAlchemy caches compiled statements per
    engine). `Gradebook.close` disposes the engine's connections, not its cache.
    """
    from nbgrader import api

    real, engines = api.create_engine, {}

    def create_engine(url, **kwargs):
        key = (str(url), repr(sorted(kwargs.items())))
        if key not in engines:
            engines[key] = real(url, **kwargs)
        return engines[key]

    api.create_engine = create_engine
    try:
        yield
    finally:
        api.create_engine = real
        for engine in engines.values():
            engine.dispose()


def prewarm() -> None:
    """Do once what every worker would otherwise do on its first (and only) submission.

    Run in the fork server that `grade` forks its workers from, so each worker starts
    with these done: the modules nbgrader imports lazily (IPython, via the kernel spec
    lookup, and the SQLite driver), the compiled notebook schema validator and the
    configured ORM mappers. About 0.3 s of CPU per submission. Nothing here starts a
    thread or keeps a file open, so forking afterwards is safe.
    """
    import IPython.paths  # noqa: F401 (jupyter_client's kernel spec lookup imports it)
    import nbformat
    import sqlalchemy.dialects.sqlite  # noqa: F401
    from ipykernel import kernelspec  # noqa: F401
    from nbgrader import api
    from nbgrader.converters import Autograde  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    configure_mappers()
    engine = sqlalchemy.create_engine("sqlite://")  # in memory
    api.Base.metadata.create_all(engine)
    engine.dispose()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    nbformat.validate(nbformat.reads(nbformat.writes(nb), as_version=4))


def autograde_submission(spec: dict[str, Any]) -> dict[str, Any]:
    """Autograde one submission as described by ``spec``; write results to ``spec['output_dir']``.

    ``spec`` keys: ``assignment``, ``student``, ``submission_dir``, ``template_db`` (a
    gradebook with only this assignment), ``support_dir`` (the assignment's source folder,
    whose non-notebook files are copied), ``notebooks`` (expected notebook names),
    ``cell_timeout``, ``max_output_bytes``, ``watched_modules``, ``sandbox`` (bool),
    ``hide`` (paths the kernel must not see), ``include_hidden``, ``output_dir``.
    """
    with _one_engine_per_database():
        return _autograde(spec)


def _autograde(spec: dict[str, Any]) -> dict[str, Any]:
    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    out_dir = spec["output_dir"]
    # Under the parent's work folder, so a worker killed for time or memory leaves nothing behind.
    tmp = tempfile.mkdtemp(prefix="ftlib-grade-", dir=spec.get("tmp_root"))
    try:
        os.chmod(tmp, 0o700)
        course = os.path.join(tmp, "course")
        assignment, student = spec["assignment"], spec["student"]
        os.makedirs(course)
        shutil.copy(spec["template_db"], os.path.join(course, "gradebook.db"))
        sub_dir = os.path.join(course, "submitted", student, assignment)
        shutil.copytree(spec["submission_dir"], sub_dir, symlinks=True,
                        ignore=lambda d, names: [n for n in names if os.path.islink(os.path.join(d, n))])
        src_dir = os.path.join(course, "source", assignment)
        os.makedirs(src_dir)
        if spec.get("support_dir") and os.path.isdir(spec["support_dir"]):
            shutil.copytree(spec["support_dir"], src_dir, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__"))
        statuses = {}
        present = sorted(n for n in os.listdir(sub_dir) if n.endswith(".ipynb"))
        for name in spec["notebooks"]:
            path = os.path.join(sub_dir, f"{name}.ipynb")
            if not os.path.exists(path):
                others = [n for n in present if n[:-6] not in spec["notebooks"]]
                hint = f"; found {', '.join(others)} instead (misnamed?)" if others else ""
                statuses[name] = ("missing", f"{name}.ipynb was not submitted{hint}")
                continue
            status, message = _prepare_notebook(path)
            statuses[name] = (status, message)
            if status != "ok":
                os.remove(path)  # nbgrader then scores it as missing: zero
        c = Config()
        c.CourseDirectory.root = course
        c.CourseDirectory.source_directory = "source"
        c.CourseDirectory.assignment_id = assignment
        c.CourseDirectory.student_id = student
        c.Execute.timeout = int(spec["cell_timeout"])
        c.Execute.execute_retries = 0
        c.GradingExecute.shutdown_kernel = "immediate"  # the kernel's state is thrown away anyway
        c.GradingExecute.max_output_bytes = int(spec["max_output_bytes"])
        c.GradingExecute.watched_modules = list(spec["watched_modules"])
        c.GradingExecute.kernel_manager_class = SandboxKernelManager
        c.SandboxKernelManager.sandbox_enabled = "1" if spec["sandbox"] else ""
        c.SandboxKernelManager.sandbox_hide = list(spec["hide"])
        c.SandboxKernelManager.sandbox_home = os.path.join(tmp, "kernel_home")
        c.OverwriteCells.add_missing_cells = True
        c.Autograde.autograde_preprocessors = [GradingExecute, IgnorePattern, ClearMetadataPreprocessor,
                                               LimitOutput, LenientSaveAutoGrades, AssignLatePenalties,
                                               CheckCellMetadata]
        c.ClearMetadataPreprocessor.preserve_cell_metadata_mask = ["nbgrader", "deletable", "editable"]
        if any(s == "ok" for s, _ in statuses.values()):
            coursedir = CourseDirectory(config=c)
            converter = Autograde(coursedir=coursedir, config=c)
            try:
                converter.start()
            except BaseException as e:  # nbgrader aborts the whole assignment on some errors
                logging.getLogger("ftlib.grade").error("nbgrader failed: %s\n%s", e, traceback.format_exc())
        result = _collect(course, spec, statuses)
        os.makedirs(os.path.join(out_dir, "autograded"), exist_ok=True)
        os.makedirs(os.path.join(out_dir, "feedback"), exist_ok=True)
        for name, nbres in result["notebooks"].items():
            nb = nbres.pop("nb")
            if nb is None:
                continue
            with open(os.path.join(out_dir, "autograded", f"{name}.ipynb"), "w", encoding="utf-8") as f:
                json.dump(nb, f, indent=1)
            page = render_feedback(nb, nbres["grades"], student=student, assignment=assignment, notebook=name,
                                   status=nbres["status"], include_hidden=spec["include_hidden"],
                                   hidden_delimiters=tuple(spec.get("hidden_delimiters") or ()) or None)
            with open(os.path.join(out_dir, "feedback", f"{name}.html"), "w", encoding="utf-8") as f:
                f.write(page)
        with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# The kernel's sockets are <runtime dir>/kernel-<12 hex>-ipc-<1..5> (`SandboxKernelManager`),
# and a Unix socket path holds at most 107 bytes.
_SOCKET_PATH_BYTES = 107
_SOCKET_NAME = "kernel-123456789abc-ipc-5"


def runtime_dir(root: str | None) -> str:
    """A new directory for the kernel's connection file and sockets, short enough for them.

    Under ``root`` when the sockets' paths fit there, else under the temporary directory or
    ``/tmp``: a long student id or ``TMPDIR`` must not push them past the limit.
    """
    for base in (root, tempfile.gettempdir(), "/tmp"):
        if base and os.path.isdir(base):
            probe = os.path.join(os.path.abspath(base), "ftlib-rt-12345678", _SOCKET_NAME)
            if len(os.fsencode(probe)) <= _SOCKET_PATH_BYTES:
                return tempfile.mkdtemp(prefix="ftlib-rt-", dir=base)
    raise OSError(f"No directory short enough for the kernel's sockets (at most {_SOCKET_PATH_BYTES} bytes): "
                  f"set TMPDIR to a short path such as /tmp.")


def main(argv: list[str]) -> int:
    """``python -m ftlib.grading.autograde SPEC.json``: run `autograde_submission`."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    os.environ["JUPYTER_RUNTIME_DIR"] = runtime_dir(spec.get("tmp_root"))
    try:
        autograde_submission(spec)
    finally:
        shutil.rmtree(os.environ["JUPYTER_RUNTIME_DIR"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
