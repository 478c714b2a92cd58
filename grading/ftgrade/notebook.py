"""Read nbgrader notebooks without running them.

Serves `ftlib check` (learners) and `ftlib grade` (instructors): find the solution cells,
the grade cells (with their points and grade_id) and the "setup" cells of a notebook.
A setup cell is a code cell that holds only imports and function or class definitions
(judged with `ast`), so it is safe and cheap to run outside the learner's kernel.

This module only reads JSON; it never executes code and imports nothing heavy.
Problems with the file are reported as `NotebookError` (a `ValueError`) with a message
meant for a person, never as a raw traceback.
"""
from __future__ import annotations

import ast
import json
import os
from typing import Any, NamedTuple

__all__ = [
    "NotebookError",
    "Cell",
    "read_notebook",
    "code_cells",
    "solution_cells",
    "grade_cells",
    "setup_cells",
    "is_setup_source",
    "imported_modules",
    "duplicate_grade_ids",
    "duplicate_cell_ids",
]


class NotebookError(ValueError):
    """A notebook file that cannot be read as a notebook; the message says why."""


class Cell(NamedTuple):
    """One code cell of interest, in notebook order.

    ``grade_id`` is nbgrader's name for the cell (``None`` for a plain setup cell);
    ``points`` is ``None`` unless the cell is a grade cell.
    """

    index: int
    grade_id: str | None
    source: str
    points: float | None
    kind: str  # "grade", "solution" or "setup"


def read_notebook(path: str | os.PathLike) -> dict[str, Any]:
    """Read a notebook file as a plain dict, with errors a learner can act on.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.ipynb`` file.

    Returns
    -------
    dict
        The notebook JSON; ``cells`` is guaranteed to be a list of dicts whose
        ``source`` is a string.

    Raises
    ------
    NotebookError
        If the file is missing, is not JSON, or does not look like a notebook.

    Examples
    --------
    >>> nb = read_notebook("course/ps1/ps1.ipynb")  # doctest: +SKIP
    >>> [c.grade_id for c in grade_cells(nb)]  # doctest: +SKIP
    ['test_add', 'test_add_hidden']
    """
    path = os.fspath(path)
    if not path.endswith(".ipynb"):
        raise NotebookError(f"Expected a notebook file ending in .ipynb, got {path!r}.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise NotebookError(f"Notebook {path!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NotebookError(f"Cannot read notebook {path!r}: {e}.") from None
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as e:
        raise NotebookError(
            f"Notebook {path!r} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
            "It was probably edited outside Jupyter or saved half-way; restore it from a "
            "checkpoint (File > Revert) or download it again."
        ) from None
    if isinstance(nb, dict) and nb.get("nbformat") == 3 and "worksheets" in nb:
        raise NotebookError(f"{path!r} is an old nbformat 3 notebook: open it in Jupyter and save it to "
                            "upgrade it (or `jupyter nbconvert --to notebook --inplace`).")
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{path!r} is JSON but not a notebook: it has no list of 'cells'.")
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            raise NotebookError(f"Cell {i} of {path!r} is not a JSON object.")
        src = cell.get("source", "")
        if isinstance(src, list):
            src = "".join(str(s) for s in src)
        cell["source"] = src if isinstance(src, str) else str(src)
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = {}
    return nb


def _nbgrader(cell: dict[str, Any]) -> dict[str, Any]:
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


def code_cells(nb: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Return ``(index, cell)`` for every code cell of ``nb``."""
    return [(i, c) for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]


def solution_cells(nb: dict[str, Any]) -> list[Cell]:
    """Return the code cells marked ``solution`` in nbgrader metadata (autograded answers)."""
    out = []
    for i, c in code_cells(nb):
        meta = _nbgrader(c)
        if meta.get("solution") and not meta.get("grade"):
            out.append(Cell(i, meta.get("grade_id"), c["source"], None, "solution"))
    return out


def grade_cells(nb: dict[str, Any]) -> list[Cell]:
    """Return the autograded test cells: code cells with ``grade`` and no ``solution``.

    A cell whose points are missing or not a number gets ``points=0.0`` rather than
    an error: the instructor's source, not the learner's copy, decides the points.
    """
    out = []
    for i, c in code_cells(nb):
        meta = _nbgrader(c)
        if meta.get("grade") and not meta.get("solution"):
            try:
                points = float(meta.get("points", 0))
            except (TypeError, ValueError):
                points = 0.0
            grade_id = meta.get("grade_id") or f"cell-{i}"
            out.append(Cell(i, str(grade_id), c["source"], points, "grade"))
    return out


def is_setup_source(source: str) -> bool:
    """Return True if ``source`` holds only imports and function/class definitions.

    Docstrings and ``pass`` are allowed too. Such a cell defines names without doing
    work, so running it outside the learner's kernel is cheap and has no side effects
    beyond the imports themselves. IPython magics (``%``/``!`` lines) make it False.

    Examples
    --------
    >>> is_setup_source("import torch\\nfrom torch import nn")
    True
    >>> is_setup_source("model = train()")
    False
    """
    if not source.strip():
        return False
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Pass)
    for node in tree.body:
        if isinstance(node, allowed):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue
        return False
    return bool(tree.body)


def setup_cells(nb: dict[str, Any]) -> list[Cell]:
    """Return the plain code cells (no nbgrader role) that only import or define names."""
    out = []
    for i, c in code_cells(nb):
        meta = _nbgrader(c)
        if meta.get("solution") or meta.get("grade"):
            continue
        if is_setup_source(c["source"]):
            out.append(Cell(i, meta.get("grade_id"), c["source"], None, "setup"))
    return out


def imported_modules(sources: list[str], *, from_names: bool = False) -> list[str]:
    """Return the absolute module names imported by ``sources``, in first-seen order.

    Sources that do not parse are skipped. Relative imports are ignored. With
    ``from_names``, ``from pkg import name`` also gives ``pkg.name``, which may be a
    submodule (``from ftlib.checks import modify_model``) or may not (a function): only
    importing it tells.
    """
    seen: dict[str, None] = {}
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    seen.setdefault(alias.name, None)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                seen.setdefault(node.module, None)
                if from_names:
                    for alias in node.names:
                        if alias.name != "*":
                            seen.setdefault(f"{node.module}.{alias.name}", None)
    return list(seen)


def duplicate_grade_ids(nb: dict[str, Any]) -> list[str]:
    """Return the nbgrader ``grade_id`` values used by more than one cell."""
    counts: dict[str, int] = {}
    for c in nb["cells"]:
        gid = _nbgrader(c).get("grade_id")
        if gid:
            counts[gid] = counts.get(gid, 0) + 1
    return [g for g, n in counts.items() if n > 1]


def duplicate_cell_ids(nb: dict[str, Any]) -> list[str]:
    """Return the nbformat cell ``id`` values used by more than one cell."""
    counts: dict[str, int] = {}
    for c in nb["cells"]:
        cid = c.get("id")
        if isinstance(cid, str):
            counts[cid] = counts.get(cid, 0) + 1
    return [c for c, n in counts.items() if n > 1]
