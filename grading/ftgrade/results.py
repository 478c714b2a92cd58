"""What `ftlib grade` makes of a worker's results: statuses, messages, logs, the CSV.

:class:`Recorder` stores each graded submission as it arrives (the gradebook through
`gradebook`, the autograded notebooks and feedback pages, the log of a failure) and names
once an error that many submissions share. The CSV and the re-grade state are replaced
atomically (:func:`write_atomic`).
"""
from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from typing import Any

from ftgrade.gradebook import write_gradebook

__all__ = ["csv_row", "Recorder", "write_atomic", "read_csv", "write_csv", "printable",
           "csv_safe", "log_name"]


def printable(text: object, limit: int = 500) -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences, bidi
    overrides) shown as ``\\x1b``-style escapes, cut to ``limit`` characters."""
    text = str(text)
    out = "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """A CSV cell a spreadsheet shows as text: OWASP's rule, a ``'`` before a leading ``= + - @``,
    tab or carriage return; other control characters escaped. Numbers pass unchanged."""
    if not isinstance(value, str):
        return value
    text = "".join(ch if ch.isprintable() or ch in " \t" else ascii(ch)[1:-1] for ch in value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_unsafe(value: str) -> str:
    # What `csv_safe` wrote back to the id it read (for rows kept from an earlier CSV).
    return value[1:] if value[:1] == "'" and value[1:2] in _FORMULA_START else value


def log_name(student: str) -> str:
    """A file name for ``student``'s log: the id itself when it is short and plain, else a digest."""
    import hashlib

    if re.fullmatch(r"[A-Za-z0-9_@+][A-Za-z0-9._@+-]{0,99}", student):
        return f"{student}.log"
    return f"student-{hashlib.sha256(student.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}.log"

_SEVERITY = {s: i for i, s in enumerate(("ok", "missing", "invalid notebook", "timeout", "crashed", "memory"))}


# "ValueError: ..." as the interpreter prints an uncaught exception's last line.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$"
                             r"|\(([A-Za-z_][\w.]*Error): (.+)\)$")


def kernel_import_error() -> str:
    """The last error line of importing the kernel's modules in a worker's environment, or ``""``."""
    import subprocess
    import sys

    from ftgrade.worker import worker_env

    try:
        r = subprocess.run([sys.executable, "-c", "import ipykernel_launcher, ftlib.checks.remote"],
                           env=worker_env(1), capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    lines = [ln.strip() for ln in r.stderr.splitlines() if _EXCEPTION_LINE.search(ln.strip())]
    return lines[-1] if r.returncode and lines else ""


def csv_row(student: str, assignment: str, info: dict, outcome: dict[str, Any] | None,
         status: str, message: str) -> dict[str, Any]:
    multi = len(info["notebooks"]) > 1
    row: dict[str, Any] = {"student": student, "assignment": assignment}
    total = max_total = 0.0
    scores = {}
    if outcome:
        for nb, res in outcome["notebooks"].items():
            for g in res["grades"]:
                scores[(nb, g["grade_id"])] = g["score"]
    by_hand = []
    for nb, nbinfo in info["notebooks"].items():
        for gid in nbinfo["grade_cells"]:
            key = f"{nb}:{gid}" if multi else gid
            max_total += nbinfo["max_scores"][gid]
            if (nb, gid) in scores and scores[(nb, gid)] is None:  # a written answer: nbgrader's formgrader
                row[key] = ""
                by_hand.append(f"{key} ({nbinfo['max_scores'][gid]:g})")
                continue
            score = scores.get((nb, gid), 0.0) or 0.0
            row[key] = score
            total += score
    if by_hand:
        note = f"to grade by hand: {', '.join(by_hand)}"
        message = f"{message}; {note}" if message else note
    row.update(total=total, max_total=max_total, status=status, message=message)
    return row


_KEEP_LOG = ("crashed", "timeout", "memory")


# A notebook's message when the grading, not the learner, failed (set by the worker itself).
_GRADER_FAILURES = ("nbgrader produced no autograded notebook", "the grading kernel could not start")


_ANNOUNCE_AFTER = 3  # submissions failing the same way before the batch says so


class Recorder:
    """Store each graded submission as it arrives: only this process writes the course's files.

    One per batch: it holds the gradebook session, the CSV rows and re-grade state being
    built, and the failures seen so far, so that an error shared by many submissions (a
    broken environment, not the learners) is named once instead of in every row.
    """

    def __init__(self, gb, *, assignment: str, info: dict, course_dir: str, roots: dict[str, str],
                 logs_dir: str, timeout: float, memory: int | None, rows: dict, state: dict, log) -> None:
        self.gb, self.assignment, self.info, self.course_dir = gb, assignment, info, course_dir
        self.roots, self.logs_dir, self.timeout, self.memory = roots, logs_dir, timeout, memory
        self.rows, self.state, self.log = rows, state, log
        self.failures: dict[str, list[str]] = {}
        self.announced: set[str] = set()

    def record(self, done: dict[str, Any]) -> None:
        """Store one submission's results; a failure to store them is that submission's row, not the batch's end."""
        try:
            self._record(done)
        except Exception as e:
            student = done.get("student", "?")
            message = f"its results could not be stored: {type(e).__name__}: {e}"
            self.rows[student] = csv_row(student, self.assignment, self.info, None, "crashed", message)
            self.log(f"  {printable(student, 60):<20} crashed  {printable(message)}")

    def _record(self, done: dict[str, Any]) -> None:
        student, run, outcome = done["student"], done["run"], done["result"]
        assignment = self.assignment
        # The cause of a failure is what the grader saw itself (an exit code, a kernel that
        # never answered), never text from a log that learner code may have shaped.
        cause, grader_failed = "", outcome is None and run["status"] == "exited"
        if run["status"] == "memory":
            status, message = "memory", f"killed: used more than {self.memory / 2**20:.0f} MiB"
        elif run["status"] == "processes":
            status, message = "crashed", "killed: started too many processes at once (a fork bomb?)"
        elif run["status"] == "timeout":
            status, message = "timeout", f"killed: ran longer than {self.timeout:g} s"
        elif outcome is None:
            status = "crashed"
            cause = message = f"the grading worker failed (exit {run['returncode']})"
        else:
            nbres = outcome["notebooks"].values()
            status = max((r["status"] for r in nbres), key=lambda s: _SEVERITY.get(s, 0), default="ok")
            failed = [r["message"] for r in nbres if r["message"] in _GRADER_FAILURES]
            grader_failed = bool(failed)
            if failed:
                cause = self._diagnosed(failed[0])
            message = "; ".join(
                f"{nb}: {self._explained(r['message'], cause)}" if len(outcome["notebooks"]) > 1
                else self._explained(r["message"], cause)
                for nb, r in outcome["notebooks"].items() if r["message"])
        log_path = os.path.join(self.logs_dir, log_name(student))
        if status in _KEEP_LOG:
            os.makedirs(self.logs_dir, exist_ok=True)
            with open(log_path, "w", encoding="utf-8") as f:
                f.write(done["log"])
            message += f"; log: {os.path.relpath(log_path, self.course_dir)}"
        elif os.path.exists(log_path):
            os.remove(log_path)  # the log of an earlier failure, now graded
        failed = outcome is None
        stored = True
        try:
            write_gradebook(self.gb, assignment, student, outcome, self.info, failed)
        except Exception as e:  # a locked or broken database: keep grading, retry next run
            stored = False
            message = (f"{message}; " if message else "") + \
                f"NOT stored in the gradebook ({type(e).__name__}: {e}); run again to retry"
        for kind, files in done["files"].items():
            dst = os.path.join(self.roots[kind], student, assignment)
            os.makedirs(dst, exist_ok=True)
            for name, text in files.items():
                with open(os.path.join(dst, name), "w", encoding="utf-8") as f:
                    f.write(text)
        row = csv_row(student, assignment, self.info, outcome, status, message)
        self.rows[student] = row
        if stored and not grader_failed:
            self.state[student] = {"hash": done["hash"], "row": row}  # a grader failure is retried next time
        shown = row["message"]
        if cause and status == "crashed":
            self.failures.setdefault(cause, []).append(student)
            if cause in self.announced:
                shown = f"the same failure as above; log: {os.path.relpath(log_path, self.course_dir)}"
            elif len(self.failures[cause]) >= _ANNOUNCE_AFTER:
                self._announce(cause, "so far")
        self.log(f"  {printable(student, 60):<20} {row['total']:>6g} / {row['max_total']:g}  {status}"
                 f"{'  ' + printable(shown) if shown else ''}  ({run['wall_s']:.1f} s, {run['peak_rss'] / 2**20:.0f} MiB)")

    def _diagnosed(self, cause: str) -> str:
        """A kernel that could not start, explained by the grader's own test of the kernel's imports.

        The kernel's own output is never read (a learner's kernel could write anything
        there); instead this process imports, once, in the workers' environment, what
        the kernel imports first, and reports what fails.
        """
        from ftgrade.autograde import KERNEL_DID_NOT_START

        if cause != KERNEL_DID_NOT_START:
            return cause
        if not hasattr(self, "_kernel_error"):
            self._kernel_error = kernel_import_error()
        return f"{cause}: {self._kernel_error}" if self._kernel_error else cause

    @staticmethod
    def _explained(message: str, cause: str) -> str:
        return cause if cause and message in _GRADER_FAILURES else message

    def _announce(self, cause: str, when: str) -> None:
        self.announced.add(cause)
        logs = os.path.relpath(self.logs_dir, self.course_dir)
        self.log("!" * 78)
        self.log(f"{len(self.failures[cause])} submission(s) {when} failed the same way: {printable(cause)}")
        self.log(f"That is the grading environment, not the learners' code; logs in {logs}{os.sep}.")
        self.log("!" * 78)

    def summarize(self) -> None:
        """Name, once, every error that two or more submissions of the batch failed with."""
        for cause, students in self.failures.items():
            if len(students) >= 2 and cause not in self.announced:
                self._announce(cause, "in all")
            elif cause in self.announced:
                self.log(f"{len(students)} submission(s) in all failed with: {printable(cause)}")


def write_atomic(path: str, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: an interrupted run leaves the old file whole."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ftlib-", dir=folder)
    try:
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_csv(path: str, exclude) -> list[dict[str, Any]]:
    """The rows of an earlier CSV at ``path`` whose student is not in ``exclude``."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [dict(r, student=_csv_unsafe(r.get("student") or "")) for r in csv.DictReader(f)]
            return [r for r in rows if r["student"] and r["student"] not in exclude]
    except FileNotFoundError:
        return []


def write_csv(path: str, rows: list[dict[str, Any]], info: dict) -> None:
    import io

    multi = len(info["notebooks"]) > 1
    cells = [f"{nb}:{g}" if multi else g for nb, i in info["notebooks"].items() for g in i["grade_cells"]]
    fields = ["student", "assignment", *cells, "total", "max_total", "status", "message"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: csv_safe(v) for k, v in row.items()} for row in rows)
    write_atomic(path, buf.getvalue())
