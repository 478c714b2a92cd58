"""Grading for the ftlib course: `ftlib check` for learners, `ftlib grade` for instructors.

A distribution of its own (``grading/`` in the repository), beside the learner library: it
imports ftlib (the checks, the cache location), ftlib never imports it, and the ``ftlib``
command hands ``check`` and ``grade`` to it.

- `notebook`: read nbgrader notebooks (solution, grade and setup cells) without running them.
- `check`: ``check_main(argv)``, a learner's self-check in a fresh process.
- `grade`: ``grade_main(argv)``, parallel, sandboxed, limited nbgrader autograding.
- `guard`, `limits`, `sandbox`, `feedback`, `autograde`: the pieces they share.
- `cluster`: ``ftlib grade --scheduler``, the same grading as Dask tasks (imports Dask).

Importing this package is cheap: no torch, no nbgrader; those load inside the commands.
"""
from ftgrade.notebook import (
    Cell,
    NotebookError,
    grade_cells,
    read_notebook,
    setup_cells,
    solution_cells,
)

__all__ = ["Cell", "NotebookError", "grade_cells", "read_notebook", "setup_cells", "solution_cells"]
