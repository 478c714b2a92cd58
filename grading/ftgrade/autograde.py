"""Autograde ONE submission with nbgrader, in a private temporary course: the worker.

`grade` forks one worker per submission from a fork server that has imported and warmed
this module (`prewarm`), and runs it under a wall-clock and memory limit; ``python -m
ftgrade.autograde SPEC.json`` does the same by hand. The worker builds a
throw-away course directory (a gradebook holding only this assignment, the submission,
the assignment's support files), runs nbgrader's own `Autograde` converter on it (grade
cells, points and kernelspec are restored from the gradebook, hidden tests run,
duplicate ids dropped, deleted grade cells re-added) and writes ``result.json``, the
autograded notebooks and HTML feedback into the spec's output directory. It never
touches the real gradebook: the parent does that.

Two nbgrader preprocessors are replaced by subclasses:

- `GradingExecute` runs the notebook's cells in a kernel started through `sandbox.wrap`
  (an allow-list: no network, no home, no course folder; a new RAM-backed working folder
  per kernel holding the release's files only), except the grade cells: those run in this
  process, the judge (`ftgrade.judge`), which reaches the kernel's names only as
  data, so nothing the learner's code does in its interpreter changes a grade and the
  hidden tests never reach the kernel. It keeps at most ``max_output_bytes`` of output
  per cell, stops a kernel that ignores the interrupt after a timeout, and turns a dead
  kernel into error outputs for the remaining cells instead of aborting.
- `LenientSaveAutoGrades` scores like nbgrader but ignores output on stderr: a warning
  or a tqdm bar in a correct answer must not cost the points.

Every file of the submission is copied with `O_NOFOLLOW`, regular files only, before any
kernel starts, and no folder a kernel could write is ever read or copied into by this
process.

What a submission costs is mostly starting its kernel and nbgrader's bookkeeping, so
the kernel starts without a history database or the debugger (`ftgrade._kernel`),
and nbgrader's gradebooks in one worker share one SQLAlchemy engine.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from typing import Any

if "jsonschema" not in sys.modules:
    # jsonschema imports rfc3987_syntax, if installed, to check the "iri" format, which no
    # notebook schema uses; it compiles its grammars at import, about 5 s per process.
    sys.modules.setdefault("rfc3987_syntax", None)  # None: "import" raises ImportError, which jsonschema skips

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbformat.notebooknode import NotebookNode
from nbgrader import utils as nbutils
from nbgrader.preprocessors import (
    AssignLatePenalties, CheckCellMetadata, Execute, IgnorePattern, LimitOutput, SaveAutoGrades)
from traitlets import Dict, Integer, List, Unicode

from ftgrade import sandbox
from ftgrade.feedback import error_summary, render_feedback
from ftgrade.notebook import NotebookError, duplicate_cell_ids, read_notebook

__all__ = ["NO_NOTEBOOK", "autograde_submission", "prewarm", "GradingExecute", "LenientSaveAutoGrades", "SandboxKernelManager"]

NO_NOTEBOOK = "nbgrader produced no autograded notebook"
KERNEL_DID_NOT_START = "the grading kernel could not start"
# What the kernel-side hooks observed, per notebook file name: filled while nbgrader runs.
_events: dict[str, dict[str, Any]] = {}


def _notebook_events(resources: dict) -> dict[str, Any]:
    name = resources.get("nbgrader", {}).get("notebook", "?")
    return _events.setdefault(name, {"restored": {}, "truncated": [], "died_in": None, "timeouts": [],
                                     "memory_errors": []})


# Seconds a kernel has to answer after the interrupt that follows a timeout: enough for
# one that stopped to send what the cell printed before it (a flood of output takes
# seconds on a loaded machine). One that never answers costs this once: it is stopped.
_DEAF_AFTER = 10.0


def _grading_kernel(cmd: list[str], max_chars: int = 0) -> list[str]:
    """``python -m ipykernel_launcher ...`` becomes ``python -m ftgrade._kernel ...``.

    `ftgrade._kernel` starts without the debugger and, given ``max_chars``, cuts every
    string in the messages it sends to that many characters.
    """
    for i in range(len(cmd) - 1):
        if cmd[i] == "-m" and cmd[i + 1] == "ipykernel_launcher":
            option = [f"--max-chars={int(max_chars)}"] if max_chars else []
            return [*cmd[:i + 1], "ftgrade._kernel", *option, *cmd[i + 2:]]
    return cmd  # another kind of kernel: run it as it is


class SandboxKernelManager(AsyncKernelManager):
    """A kernel manager that launches the kernel inside `sandbox.wrap` when enabled.

    Every kernel starts in a new working folder (and a new runtime folder for its
    sockets) made from the files the assignment releases (``sandbox_files``, a list of
    ``[relative path, trusted copy]``): nothing a previous kernel of the submission
    left behind (a link aimed at a grader's file) is ever copied into or through. The
    kernel inherits no open file of the grader: its stdin, stdout and stderr are
    ``/dev/null`` (it reports through its sockets only).
    """

    sandbox_hide = List(Unicode()).tag(config=True)
    sandbox_scratch = Unicode("").tag(config=True)  # a private folder of the worker's for kernels' folders
    sandbox_files = List(List(Unicode())).tag(config=True)  # [name inside, trusted source] per file
    sandbox_enabled = Unicode("").tag(config=True)  # "1" to wrap
    sandbox_tmp_bytes = Integer(0).tag(config=True)  # the size of the kernel's /tmp and working folder
    max_message_chars = Integer(0).tag(config=True)  # the longest string a kernel's message carries (0: any)

    def __init__(self, **kwargs):
        # The sandbox shares no network with us, but Unix sockets work; their path must be
        # absolute, as the kernel runs in another working directory.
        from jupyter_core.paths import jupyter_runtime_dir

        runtime = tempfile.mkdtemp(prefix="k", dir=jupyter_runtime_dir())
        name = os.path.join(runtime, f"kernel-{uuid.uuid4().hex[:12]}")
        kwargs.setdefault("transport", "ipc")
        kwargs.setdefault("ip", name + "-ipc")
        kwargs.setdefault("connection_file", name + ".json")
        super().__init__(**kwargs)

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        kw.update(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.sandbox_enabled:
            # bwrap itself is pid 1 in the sandbox, and /proc/1/environ is readable there: it
            # gets nothing of the grader's environment (the kernel's is set by --setenv).
            kw["env"] = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    def lock_runtime(self) -> None:
        """Once the kernel listens, stop it from writing into its (host) socket folder.

        The folder must be writable while the kernel creates its sockets; afterwards a
        learner could fill the grader's disk through it. Where this process is root, the
        folder and connection file go to another owner, read-only, so the kernel (root
        outside its sandbox, but without capabilities) can neither write nor chmod them
        back. Elsewhere a thread (`_watch_runtime`) kills a kernel that writes there.
        """
        folder = os.path.dirname(os.path.realpath(self.connection_file))
        if not self.sandbox_enabled:
            return
        if os.geteuid() != 0:
            process = getattr(self.provisioner, "process", None)
            if process is not None:
                threading.Thread(target=_watch_runtime, args=(folder, process), daemon=True).start()
            return
        with contextlib.suppress(OSError):
            os.chown(self.connection_file, 65534, 65534)
            os.chmod(self.connection_file, 0o444)
            os.chown(folder, 65534, 65534)
            os.chmod(folder, 0o555)

    def _home(self) -> str:
        """A new folder holding the released files, copied from the worker's trusted copies."""
        home = tempfile.mkdtemp(prefix="home-", dir=self.sandbox_scratch or None)
        for rel, src in self.sandbox_files:
            dst = os.path.join(home, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            copy_regular_file(src, dst)
        return home

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = _grading_kernel(super().format_kernel_cmd(extra_arguments), self.max_message_chars)
        if not self.sandbox_enabled:
            return cmd
        # Interrupt through the control channel: a SIGINT to the process group would also
        # hit bwrap, and its death takes the kernel with it (--die-with-parent).
        self.kernel_spec.interrupt_mode = "message"
        cwd = (self._launch_args or {}).get("cwd") or os.getcwd()
        home = self._home()
        runtime = os.path.dirname(os.path.realpath(self.connection_file))
        # In its own pid namespace the kernel's parent is pid 1, which ipykernel reads as "my
        # parent died" unless told that 1 is expected; --die-with-parent covers a dead worker.
        env = sandbox.kernel_env(os.environ, JPY_PARENT_PID="1", IPYTHONDIR="/tmp/.ipython",
                                 MPLCONFIGDIR="/tmp/.matplotlib")
        # The same working directory for every submission and machine, so that tracebacks in
        # feedback are the same wherever it was graded, and name no folder of the grader's.
        inside = sandbox.WORKDIR + "/" + os.path.basename(cwd)
        return sandbox.wrap(cmd, hide=list(self.sandbox_hide), writable=[runtime], cwd=inside, env=env,
                            scratch=home + ".etc", tmp_bytes=self.sandbox_tmp_bytes or None,
                            workdir=(home, inside))


_RUNTIME_BYTES = 1 << 20  # a kernel's socket folder holds a connection file and five sockets


def _watch_runtime(folder: str, process) -> None:
    """Kill the sandbox (bwrap) of a kernel that writes more than a MiB into its socket folder."""
    while process.poll() is None:
        try:
            entries = list(os.scandir(folder))
            used = sum(e.stat(follow_symlinks=False).st_size for e in entries)
        except OSError:
            return
        if used > _RUNTIME_BYTES or len(entries) > 64:
            with contextlib.suppress(OSError):
                process.kill()
            return
        time.sleep(0.2)


def copy_regular_file(src: str, dst: str) -> None:
    """Copy the regular file ``src`` to the new file ``dst``, following no link at either end."""
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd_in).st_mode):
            raise OSError(f"{src} is not a regular file")
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd_out, "wb") as out, os.fdopen(fd_in, "rb", closefd=False) as inp:
            shutil.copyfileobj(inp, out)
    finally:
        os.close(fd_in)


class GradingExecute(Execute):
    """nbgrader's Execute with a sandboxed kernel, grade cells judged outside it, bounded output.

    Solution and other cells run in the learner's kernel as usual. A grade cell does not:
    the `judge` runs it in this process, reaching the kernel's names only as data, so
    what the learner's code did to its interpreter cannot change a grade, and hidden
    tests never reach the kernel. A kernel that ignores an interrupt after a timeout is
    stopped, and the cells after it are marked as not run, so the points already earned
    are kept.
    """

    max_output_bytes = Integer(1_000_000, help="Output kept per cell while it runs.").tag(config=True)
    tests = Dict(help="notebook -> grade_id -> source of its autograder tests, from the gradebook.").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        from ftgrade.judge import Judge, KernelChannel

        self._events = _notebook_events(resources or {})
        self._tests = dict(self.tests.get((resources or {}).get("nbgrader", {}).get("notebook"), {}))
        self._out_bytes: dict[int, int] = {}
        self._dead_at = None
        self._current = None  # the cell being run; None until the kernel has answered
        self._locked = False
        self._stopped_after_timeout = False
        self._judge = Judge(KernelChannel(self._ask_kernel), cell_timeout=float(self.timeout or 30))
        # No history database: nothing reads it, and creating it costs each kernel start 0.05 s.
        self.extra_arguments = ["--HistoryManager.enabled=False"]
        try:
            return super().preprocess(nb, resources, km)
        except Exception:
            if self._current is None:  # no cell ran: the kernel never answered
                self._events["kernel_start_failed"] = True
            raise
        finally:
            self._events["origins"] = dict(self._judge.channel.origins)
            self._events["used"] = sorted(self._judge.learner_names)

    def _ask_kernel(self, expr: str, timeout: float) -> str:
        """Evaluate ``expr`` in the kernel as a user expression; its text/plain result."""
        from queue import Empty

        from ftgrade.judge import CellTimeout, KernelStopped

        if self._dead_at is not None:
            raise KernelStopped(f"not run: the kernel stopped in cell {self._dead_at}")
        msg_id = self.kc.execute("", silent=False, store_history=False, user_expressions={"r": expr},
                                 allow_stdin=False)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._stop_if_deaf()
                raise CellTimeout()
            try:
                msg = run_sync(self.kc.shell_channel.get_msg)(timeout=min(1.0, remaining))
            except Empty:
                if not run_sync(self.kc.is_alive)():
                    raise KernelStopped("the kernel died") from None
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                break
        result = (msg.get("content", {}).get("user_expressions") or {}).get("r") or {}
        if result.get("status") != "ok":
            from ftlib.checks.remote import ProtocolError

            raise ProtocolError("the kernel could not answer (its ftlib or IPython does not work)")
        text = (result.get("data") or {}).get("text/plain", "")
        return text if isinstance(text, str) else ""

    def _stop_if_deaf(self, *, interrupt: bool = True) -> None:
        """After a timeout: interrupt (unless nbclient already did); a kernel still busy
        `_DEAF_AFTER` seconds later is stopped for good.

        Never a second interrupt: one that lands in ipykernel's own code after the first
        stopped the learner's (while it still flushes the cell's output on a loaded
        machine) aborts the reply it was sending ("KeyboardInterrupt caught in kernel"), and
        the kernel answers nothing after that.
        """
        from queue import Empty

        if interrupt:
            with contextlib.suppress(Exception):
                run_sync(self.km.interrupt_kernel)()
        msg_id = self.kc.execute("", silent=True, store_history=False)
        deadline = time.monotonic() + _DEAF_AFTER
        while time.monotonic() < deadline:
            try:
                msg = run_sync(self.kc.shell_channel.get_msg)(timeout=1.0)
            except Empty:
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return
        with contextlib.suppress(Exception):
            run_sync(self.km.shutdown_kernel)(now=True)
        self._stopped_after_timeout = True
        self._dead_at = self._current

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        self._current = index
        if not self._locked and isinstance(self.km, SandboxKernelManager):
            self.km.lock_runtime()  # the kernel answered: its sockets exist
            self._locked = True
        if self._dead_at is not None:
            why = "it was stopped after a timeout" if self._stopped_after_timeout else "it died"
            cell.outputs = [NotebookNode(output_type="error", ename="KernelDied", traceback=[],
                                         evalue=f"not run: the kernel stopped in cell {self._dead_at} ({why})")]
            return cell, resources
        gid = (cell.metadata.get("nbgrader") or {}).get("grade_id")
        if nbutils.is_grade(cell) and gid in self._tests:
            # An autograder test: the instructor's code, from the gradebook, never the notebook's
            # text. (A grade cell that is also a solution cell holds the learner's code, graded
            # by hand: it runs in the kernel like any other learner cell.)
            cell.outputs, error = self._judge.run(self._tests[gid], label=f"<grade cell {gid}>")
            cell.execution_count = None
            if error == "CellTimeoutError":
                self._events["timeouts"].append(index)
            elif error == "MemoryError":  # the learner's function ran out of memory in the kernel
                self._events["memory_errors"].append(f"{index} ({cell.metadata.nbgrader.get('grade_id')})")
            return cell, resources
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except CellTimeoutError:
            # The kernel did not go idle within nbclient's IOPub timeout after the interrupt
            # (it ignored it, or was still sending output): the cell timed out, whatever the
            # kernel does next; `_stop_if_deaf` below finds out which.
            cell.outputs = list(cell.get("outputs", [])) + [NotebookNode(
                output_type="error", ename="CellTimeoutError", traceback=[],
                evalue=f"the cell did not finish within {self.timeout} s and was interrupted")]
        except DeadKernelError:
            self._dead_at = index
            self._events["died_in"] = index
            cell.outputs = list(cell.get("outputs", [])) + [NotebookNode(
                output_type="error", ename="KernelDied", traceback=[],
                evalue="the kernel died while running this cell (os._exit, a crash, or killed)")]
        if any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", [])):
            self._events["timeouts"].append(index)
            if self._dead_at is None:
                self._stop_if_deaf(interrupt=False)  # nbclient interrupted it (interrupt_on_timeout)
        if any(o.get("ename") == "MemoryError" for o in cell.get("outputs", [])):
            gid = (cell.metadata.get("nbgrader") or {}).get("grade_id")
            self._events["memory_errors"].append(f"{index} ({gid})" if gid else str(index))
        if _cap_outputs(cell, self.max_output_bytes) and index not in self._events["truncated"]:
            self._events["truncated"].append(index)
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

    def _update_display_id(self, display_id, msg):
        content = msg.get("content", {})
        if sum(len(str(v)) for v in (content.get("data") or {}).values()) > self.max_output_bytes:
            content["data"] = {"text/plain": f"... display update dropped by ftlib grade: over {self.max_output_bytes} bytes ..."}
        return super()._update_display_id(display_id, msg)


def _cap_outputs(cell, limit: int) -> bool:
    """Shorten a cell's stored outputs to about ``limit`` characters in all; True if it had to."""
    total, cut = 0, False
    for out in cell.get("outputs", []):
        for key in ("text", "evalue"):
            if isinstance(out.get(key), str):
                room = max(0, limit - total)
                if len(out[key]) > room:
                    out[key], cut = out[key][:room] + "\n... truncated by ftlib grade ...", True
                total += len(out[key])
        if isinstance(out.get("traceback"), list):
            joined = sum(len(str(t)) for t in out["traceback"])
            if total + joined > limit:
                out["traceback"], cut = [f"{out.get('ename', 'Error')}: (traceback truncated by ftlib grade)"], True
            total += sum(len(str(t)) for t in out["traceback"])
        data = out.get("data")
        if isinstance(data, dict):
            for mime in list(data):
                size = len(str(data[mime]))
                if total + size > limit:
                    del data[mime]
                    cut = True
                else:
                    total += size
            if not data:
                data["text/plain"] = "... output dropped by ftlib grade: too large ..."
    return cut


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


_CELL_ID = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")  # nbformat 4.5's rule


def _prepare_notebook(path: str, grade_ids: set[str], kinds: dict | None = None) -> tuple[str, str]:
    """Check that ``path`` is a readable notebook and repair what a learner's tools break, in place.

    Upgrades nbformat 3; replaces missing, duplicate or invalid cell ids; keeps the last
    of duplicated grade cells (as nbgrader does); drops nbgrader metadata that names no
    cell of the assignment (no ``grade_id``, or one the gradebook does not know, such
    as a "bonus" cell the learner added), so that it is run as ordinary code.
    """
    import nbformat

    notes = []
    try:  # nbformat 3 (worksheets instead of cells): nbformat upgrades it
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if isinstance(raw, dict) and raw.get("nbformat") == 3:
            nbformat.write(nbformat.reads(json.dumps(raw), as_version=4), path)
            notes.append("upgraded from nbformat 3")
    except Exception:  # not JSON, or not an nbformat 3 notebook: read_notebook says what it is
        pass
    try:
        nb = read_notebook(path)
    except NotebookError as e:
        return "invalid notebook", str(e).replace(os.path.dirname(path) + os.sep, "")
    try:
        parsed = nbformat.reads(json.dumps(nb), as_version=4)
    except Exception as e:  # nbformat's own complaints (bad nbformat version, schema)
        return "invalid notebook", f"{os.path.basename(path)} is not a valid notebook: {_one_line(e)}"
    seen_ids: set = set()
    for cell in reversed(parsed.cells):
        meta = cell.get("metadata", {})
        nbg = meta.get("nbgrader")
        gid = nbg.get("grade_id") if isinstance(nbg, dict) else None
        if nbg is None:
            continue
        if not isinstance(gid, str) or not gid:
            del meta["nbgrader"]
            notes.append("nbgrader metadata without a grade_id ignored")
        elif grade_ids and gid not in grade_ids:
            del meta["nbgrader"]
            notes.append(f"cell {gid!r} is not part of the assignment: run, not graded")
        elif kinds and gid in kinds and any(nbg.get(k, False) != v for k, v in kinds[gid].items()):
            # A cell's role is the release's, not what the learner's copy says (a solution
            # cell turned into a grade cell would crash nbgrader or be scored as a test).
            nbg.update(kinds[gid])
            for flag in ("grade", "solution", "locked", "task"):
                nbg.setdefault(flag, False)
            notes.append(f"cell {gid!r}: nbgrader metadata restored")
            seen_ids.add(gid)
        elif gid in seen_ids:
            # nbgrader's DeduplicateIds keeps the last cell of a grade_id and empties the
            # others' metadata, which its own OverwriteCells(add_missing_cells=True) then
            # trips over. Make the same choice, but drop the key entirely.
            del meta["nbgrader"]
            notes.append(f"duplicate cell {gid!r} ignored")
        else:
            seen_ids.add(gid)
    ids: set = set()
    repaired = []
    for cell in parsed.cells:
        cid = cell.get("id")
        if not isinstance(cid, str) or cid in ids or not _CELL_ID.match(cid):
            if cid is not None:
                repaired.append(str(cid)[:40])
            cell["id"] = uuid.uuid4().hex[:8]
        ids.add(cell["id"])
    dups = duplicate_cell_ids(nb)  # nbformat renames duplicates as it reads: ask the file
    invalid = sorted(set(repaired) - set(dups))
    if dups:
        notes.append(f"duplicate cell ids repaired: {', '.join(dups[:5])}")
    if invalid:
        notes.append(f"cell ids repaired: {', '.join(invalid[:5])}")
    parsed.nbformat, parsed.nbformat_minor = 4, max(parsed.get("nbformat_minor", 5), 5)
    nbformat.write(parsed, path)
    return "ok", "; ".join(notes)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def _collect(course: str, spec: dict[str, Any], statuses: dict[str, tuple[str, str]],
             flags: dict[str, list[str]]) -> dict[str, Any]:
    from nbgrader.api import Gradebook, MissingEntry

    assignment, student = spec["assignment"], _INNER_STUDENT
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
                if _events.get(name, {}).get("kernel_start_failed"):
                    message = KERNEL_DID_NOT_START
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
                grades.append({"grade_id": gc.name, "score": score, "max_score": gc.max_score, "message": msg})
            notes = [message] if message else []
            if nb is not None:
                if events.get("memory_errors"):
                    status = "memory"
                    notes = [f"MemoryError in cell(s) {', '.join(events['memory_errors'])}"] + notes
                elif events.get("timeouts"):
                    status = "timeout"
                    notes = [f"cell(s) {', '.join(map(str, events['timeouts']))} timed out after "
                             f"{spec['cell_timeout']} s"] + notes
                elif events.get("died_in") is not None:
                    status = "crashed"
                    notes = [f"the kernel died in cell {events['died_in']}"] + notes
                if events.get("truncated"):
                    notes.append("output truncated in cell(s) " + ", ".join(map(str, sorted(set(events["truncated"])))))
            nb_flags = list(flags.get(name, []))
            for used in events.get("used", []):
                origin = events.get("origins", {}).get(used, "")
                if origin.split(".")[0] == "ftlib" and not origin.startswith("ftlib.checks"):
                    nb_flags.append(f"{used} is ftlib's own {origin}.{used}")
            if nb_flags:
                notes.append("FLAGGED, uses ftlib's reference: " + "; ".join(sorted(set(nb_flags))))
            result["notebooks"][name] = {"status": status, "message": "; ".join(notes), "grades": grades,
                                         "late_penalty": penalty, "comments": comments, "nb": nb,
                                         "flags": sorted(set(nb_flags))}
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
    ``cell_timeout``, ``max_output_bytes``, ``sandbox`` (bool), ``hide`` (paths the kernel
    must not see), ``include_hidden``, ``output_dir``, the course's ``ignore`` patterns and
    ``exclude_overwriting`` files, ``cells`` (per notebook: the cell ids the gradebook knows
    and the names its solution cells define) and ``tmp_bytes`` (the kernel's tmpfs sizes).
    """
    with _one_engine_per_database():
        return _autograde(spec)


_INNER_STUDENT = "student"
_NOT_SUBMITTED = {"timestamp.txt"}  # written by nbgrader's exchange, not by the learner


def _copy_tree(src: str, dst: str, skip=lambda rel: False) -> list[str]:
    """Copy the regular files and folders under ``src`` to the new folder ``dst``; return their paths.

    ``src`` may hold anything a learner made: no link is followed or copied, and a file is
    opened with ``O_NOFOLLOW`` and copied only if it is a regular file.
    """
    copied = []
    os.makedirs(dst, exist_ok=False)
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel_dir = os.path.relpath(dirpath, src)
        kept = []
        for d in sorted(dirnames):
            rel = os.path.normpath(os.path.join(rel_dir, d))
            if not os.path.islink(os.path.join(dirpath, d)) and not skip(rel):
                os.makedirs(os.path.join(dst, rel))
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if skip(rel):
                continue
            try:
                copy_regular_file(os.path.join(dirpath, name), os.path.join(dst, rel))
            except OSError:  # a link, a fifo, a socket: not a file a notebook needs
                continue
            copied.append(rel)
    return copied


def _ignored(patterns: list[str]):
    """nbgrader's rule (`utils.is_ignored`): a path is ignored when any part matches a pattern."""
    import fnmatch

    def skip(rel: str) -> bool:
        return any(fnmatch.fnmatch(part, p) for part in rel.split(os.sep) for p in patterns)
    return skip


def _check_timestamp(sub_dir: str) -> str:
    """Remove a ``timestamp.txt`` that nbgrader cannot read (it would abort the notebook); say so."""
    path = os.path.join(sub_dir, "timestamp.txt")
    if not os.path.lexists(path):
        return ""
    from nbgrader.utils import parse_utc

    try:
        with open(path, encoding="utf-8") as f:
            parse_utc(f.read(200).strip())
        return ""
    except Exception:
        os.remove(path)
        return "timestamp.txt is not a date: ignored (no late penalty applied)"


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
        # nbgrader matches its paths as globs: a real id with "[" or a newline would match no
        # folder, so the private course knows the student by a plain name.
        assignment, student = spec["assignment"], _INNER_STUDENT
        os.makedirs(course)
        shutil.copy(spec["template_db"], os.path.join(course, "gradebook.db"))
        ignore = list(spec.get("ignore") or [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"])
        # The learner's files; the instructor's source, which the judge imports the course's
        # checks module from (never from the submission); and what the release holds besides
        # notebooks (nbgrader's generate_assignment: the source less the course's `ignore`).
        sub_dir = os.path.join(course, "submitted", student, assignment)
        os.makedirs(os.path.dirname(sub_dir))
        submitted = _copy_tree(spec["submission_dir"], sub_dir)
        trusted = os.path.join(tmp, "trusted")
        _copy_tree(spec["support_dir"], trusted, skip=_ignored(["*.ipynb", ".ipynb_checkpoints", "__pycache__"]))
        src_dir = os.path.join(course, "source", assignment)
        os.makedirs(os.path.dirname(src_dir))
        released = _copy_tree(spec["support_dir"], src_dir, skip=_ignored(ignore + ["*.ipynb"]))
        # The kernel's folder: the released files, and the learner's own version only of those
        # the course's `exclude_overwriting` lets learners change.
        own = set(spec.get("exclude_overwriting") or [])
        files = [[rel, os.path.join(sub_dir if rel in own and rel in submitted else src_dir, rel)] for rel in released]
        files += [[rel, os.path.join(sub_dir, rel)] for rel in sorted(own & set(submitted) - set(released))]
        expected = {f"{n}.ipynb" for n in spec["notebooks"]} | own | _NOT_SUBMITTED
        listed = _ignored(ignore)
        unexpected = sorted(rel for rel in submitted if rel not in expected and not listed(rel))
        stamp_note = _check_timestamp(sub_dir)

        statuses, flags = {}, {}
        present = sorted(n for n in os.listdir(sub_dir) if n.endswith(".ipynb"))
        for name in spec["notebooks"]:
            path = os.path.join(sub_dir, f"{name}.ipynb")
            if not os.path.isfile(path):
                others = [n for n in present if n[:-6] not in spec["notebooks"]]
                hint = f"; found {', '.join(others)} instead (misnamed?)" if others else ""
                statuses[name] = ("missing", f"{name}.ipynb was not submitted{hint}")
                continue
            known = spec.get("cells", {}).get(name, {})
            status, message = _prepare_notebook(path, set(known.get("cell_ids", [])), known.get("kinds"))
            statuses[name] = (status, message)
            if status != "ok":
                os.remove(path)  # nbgrader then scores it as missing: zero
                continue
            flags[name] = _reference_flags(path, set(known.get("exercises", [])))
        c = Config()
        c.CourseDirectory.root = course
        c.CourseDirectory.source_directory = "source"
        c.CourseDirectory.assignment_id = assignment
        c.CourseDirectory.student_id = student
        c.CourseDirectory.ignore = ignore
        c.Execute.timeout = int(spec["cell_timeout"])
        c.Execute.execute_retries = 0
        c.GradingExecute.shutdown_kernel = "immediate"  # the kernel's state is thrown away anyway
        c.GradingExecute.max_output_bytes = int(spec["max_output_bytes"])
        c.GradingExecute.tests = {name: dict(info.get("tests", {})) for name, info in spec.get("cells", {}).items()}
        c.GradingExecute.kernel_manager_class = SandboxKernelManager
        c.SandboxKernelManager.sandbox_enabled = "1" if spec["sandbox"] else ""
        c.SandboxKernelManager.sandbox_hide = list(spec["hide"])
        c.SandboxKernelManager.sandbox_scratch = tmp
        c.SandboxKernelManager.sandbox_files = files
        c.SandboxKernelManager.sandbox_tmp_bytes = int(spec.get("tmp_bytes") or 0)
        c.SandboxKernelManager.max_message_chars = int(spec["max_output_bytes"])  # kept per cell anyway
        c.OverwriteCells.add_missing_cells = True
        c.Autograde.autograde_preprocessors = [GradingExecute, IgnorePattern, ClearMetadataPreprocessor,
                                               LimitOutput, LenientSaveAutoGrades, AssignLatePenalties,
                                               CheckCellMetadata]
        c.ClearMetadataPreprocessor.preserve_cell_metadata_mask = ["nbgrader", "deletable", "editable"]
        if any(s == "ok" for s, _ in statuses.values()):
            coursedir = CourseDirectory(config=c)
            converter = Autograde(coursedir=coursedir, config=c)
            sys.path.insert(0, trusted)  # the judge imports the course's checks module from here
            cwd = os.getcwd()
            os.chdir(trusted)
            try:
                converter.start()
            except BaseException as e:  # nbgrader aborts the whole assignment on some errors
                logging.getLogger("ftlib.grade").error("nbgrader failed: %s\n%s", e, traceback.format_exc())
            finally:
                os.chdir(cwd)
                sys.path.remove(trusted)
        result = _collect(course, spec, statuses, flags)
        notes = [stamp_note] if stamp_note else []
        if unexpected:
            more = f" and {len(unexpected) - 20} more" if len(unexpected) > 20 else ""
            notes.append(f"files not used for grading: {', '.join(unexpected[:20])}{more}")
        result["unexpected_files"] = unexpected
        for nbres in result["notebooks"].values():
            if notes:
                nbres["message"] = "; ".join([nbres["message"], *notes] if nbres["message"] else notes)
        os.makedirs(os.path.join(out_dir, "autograded"), exist_ok=True)
        os.makedirs(os.path.join(out_dir, "feedback"), exist_ok=True)
        for name, nbres in result["notebooks"].items():
            nb = nbres.pop("nb")
            if nb is None:
                continue
            with open(os.path.join(out_dir, "autograded", f"{name}.ipynb"), "w", encoding="utf-8") as f:
                json.dump(nb, f, indent=1)
            page = render_feedback(nb, nbres["grades"], student=spec["student"], assignment=assignment, notebook=name,
                                   status=nbres["status"], include_hidden=spec["include_hidden"],
                                   hidden_delimiters=tuple(spec.get("hidden_delimiters") or ()) or None,
                                   notes=notes + [f"flagged: {f}" for f in nbres.get("flags", [])])
            with open(os.path.join(out_dir, "feedback", f"{name}.html"), "w", encoding="utf-8") as f:
                f.write(page)
        with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _reference_flags(path: str, exercises: set[str]) -> list[str]:
    """What the notebook's solution cells take from ftlib's reference for the exercises, read statically."""
    from ftgrade.judge import reference_aliases, reference_uses

    if not exercises:
        return []
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    text = ["".join(c["source"]) if isinstance(c.get("source"), list) else str(c.get("source", "")) for c in code]
    aliases = reference_aliases(text, exercises)
    found = []
    for cell, source in zip(code, text):
        if (cell.get("metadata", {}).get("nbgrader") or {}).get("solution"):
            found += reference_uses(source, exercises, aliases)
    return [f"the notebook takes {name}" for name in sorted(set(found))]


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
            # ftlib-rt-XXXXXXXX/kXXXXXXXX/<socket>: the runtime folder, then one per kernel
            probe = os.path.join(os.path.abspath(base), "ftlib-rt-12345678", "k12345678", _SOCKET_NAME)
            if len(os.fsencode(probe)) <= _SOCKET_PATH_BYTES:
                return tempfile.mkdtemp(prefix="ftlib-rt-", dir=base)
    raise OSError(f"No directory short enough for the kernel's sockets (at most {_SOCKET_PATH_BYTES} bytes): "
                  f"set TMPDIR to a short path such as /tmp.")


def main(argv: list[str]) -> int:
    """``python -m ftgrade.autograde SPEC.json``: run `autograde_submission`."""
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
