"""The judge: where `ftlib grade` runs grade cells, outside the learner's interpreter.

nbgrader runs a notebook's grade cells in the learner's own kernel, so a learner can
change what they check (input transformers, ``builtins``, the checks module, a file
that shadows it). `ftlib grade` runs each grade cell here instead, in the grading
worker, which never executes learner code: a name the cell does not define itself is
looked up in the learner's kernel and arrives as data, a module the judge imported
itself, or a `Remote` (`ftlib.checks.remote`) whose calls run in the kernel and return
data. The hidden tests therefore never reach the kernel, and its outputs (the cell's
error, if any) are the judge's own: only they decide the points.

Names resolve in this order: what the grade cells of this notebook assigned, the
judge's built-ins (a learner's ``len = lambda x: 3`` does not reach a grade cell), then
the learner's namespace. A grade cell imports what it uses; the course's support files
(its checks module) are importable from the trusted source folder, never from the
submission.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import time
from typing import Any, Callable

from nbformat.notebooknode import NotebookNode

from ftlib.checks.remote import Channel, ProtocolError

__all__ = ["Judge", "KernelChannel", "KernelStopped", "reference_aliases", "reference_uses"]

_MAX_OUT = 20_000  # characters of a grade cell's printed output, and of an error message, kept


class KernelStopped(Exception):
    """The learner's kernel is gone (it died, or was stopped after a timeout)."""


class CellTimeout(Exception):
    """The learner's code did not answer within the grade cell's time."""


class KernelChannel(Channel):
    """Requests to the learner's kernel through ``ask(expression, timeout) -> text/plain``.

    ``ask`` is the grading worker's: it evaluates one expression as a kernel
    ``user_expression`` and returns IPython's plain-text form of the result (the kernel
    returns a JSON string, so this is its ``repr``), or raises `CellTimeout` or
    `KernelStopped`.
    """

    def __init__(self, ask: Callable[[str, float], str]) -> None:
        self._ask = ask
        self.deadline = float("inf")

    def _send(self, text: str) -> str:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise CellTimeout("the grade cell ran out of time")
        expr = f"__import__('ftlib.checks.remote', fromlist=['serve']).serve({text!r})"
        plain = self._ask(expr, remaining)
        try:
            value = ast.literal_eval(plain)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise ProtocolError("the kernel's reply is not a string") from None
        if type(value) is not str:
            raise ProtocolError("the kernel's reply is not a string")
        return value


class _Names(dict):
    """A grade cell's local namespace: its own assignments, then built-ins, then the learner's names."""

    def __init__(self, channel: Channel, seen: set[str]) -> None:
        super().__init__()
        self._channel, self._seen = channel, seen

    def __missing__(self, name: str):
        if hasattr(builtins, name):
            raise KeyError(name)  # Python then finds the judge's own built-in
        self._seen.add(name)
        try:
            return self._channel.resolve(name)
        except NameError:
            raise KeyError(name) from None


class Judge:
    """Runs the grade cells of one notebook against one learner kernel.

    ``channel`` reaches the kernel; ``cell_timeout`` bounds each grade cell's time in
    the kernel. `run` returns the cell's outputs as nbformat output nodes.
    """

    def __init__(self, channel: KernelChannel, *, cell_timeout: float) -> None:
        self.channel, self.cell_timeout = channel, cell_timeout
        self.learner_names: set[str] = set()  # the learner's names the grade cells used
        self._globals: dict[str, Any] = {"__name__": "__grade__", "__builtins__": builtins}
        self._locals = _Names(channel, self.learner_names)

    def run(self, source: str, *, label: str = "<grade cell>") -> tuple[list[NotebookNode], str | None]:
        """Run one grade cell; return its outputs and the name of its error (None if it passed)."""
        out, err = io.StringIO(), io.StringIO()
        error = None
        self.channel.deadline = time.monotonic() + self.cell_timeout
        try:
            code = compile(source, label, "exec", dont_inherit=True)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                exec(code, self._globals, self._locals)  # noqa: S102 - the instructor's grade cell
        except CellTimeout:
            error = ("CellTimeoutError", f"the learner's code did not finish within {self.cell_timeout:g} s")
        except KernelStopped as e:
            error = ("KernelStopped", str(e))
        except Exception as e:  # a failed check: the cell gets no points
            error = (type(e).__name__, _text(e))
        except BaseException as e:  # SystemExit, KeyboardInterrupt raised by a grade cell
            error = (type(e).__name__, _text(e))
        finally:
            self.channel.deadline = float("inf")
        outputs = []
        if out.getvalue():
            outputs.append(NotebookNode(output_type="stream", name="stdout", text=_cut(out.getvalue())))
        if err.getvalue():
            outputs.append(NotebookNode(output_type="stream", name="stderr", text=_cut(err.getvalue())))
        if error is not None:
            name, message = error
            outputs.append(NotebookNode(output_type="error", ename=name, evalue=message,
                                        traceback=[f"{name}: {message}"]))
        return outputs, (error[0] if error else None)


def _text(e: BaseException) -> str:
    try:
        return _cut(str(e))
    except Exception:
        return f"<{type(e).__name__}>"


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_OUT else text[:_MAX_OUT] + f"\n... ({len(text) - _MAX_OUT} more characters)"


def reference_aliases(sources: list[str], exercises: set[str]) -> dict[str, str]:
    """Names that ``sources`` bind to ftlib's reference of an exercise: ``{"ftlib_count": "ftlib.models.count_parameters"}``.

    A course may import ftlib's version for a comparison (08 imports
    ``extract_features as ftlib_extract_features``); that is no flag by itself, but a
    solution cell that calls it is.
    """
    aliases = {}
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ftlib":
                for alias in node.names:
                    if alias.name in exercises:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def reference_uses(source: str, exercises: set[str], aliases: dict[str, str] | None = None) -> list[str]:
    """What the solution cell ``source`` takes from ftlib's reference for ``exercises`` instead of writing it.

    ``from ftlib.models import count_parameters as c``; ``import ftlib.models`` then
    ``ftlib.models.count_parameters``; ``from ftlib import models`` then
    ``models.count_parameters`` or ``getattr(models, "count_parameters")``;
    ``__import__("ftlib.models")...``; or a name another cell bound to the reference
    (``aliases``, see `reference_aliases`). Read statically; source that does not parse
    names nothing.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    aliases = dict(aliases or {})
    found, ftlib_modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ftlib":
            for alias in node.names:
                if alias.name in exercises:
                    found.append(f"{node.module}.{alias.name}")
                else:
                    ftlib_modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ftlib":
                    ftlib_modules.add((alias.asname or alias.name).split(".")[0])

    def from_ftlib(node) -> bool:  # ftlib, an alias of one of its modules, or __import__("ftlib...")
        while isinstance(node, ast.Attribute):
            node = node.value
        if isinstance(node, ast.Name):
            return node.id in ftlib_modules
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module"):
            return any(isinstance(a, ast.Constant) and str(a.value).split(".")[0] == "ftlib" for a in node.args)
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in exercises and from_ftlib(node.value):
            found.append(ast.unparse(node))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in exercises
              and from_ftlib(node.args[0])):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in aliases:
            found.append(aliases[node.id])
    return sorted(set(found))
