"""Run each exercise's contract from ftlib.checks on the learner's own definitions."""
import importlib

import pytest

from ftgrade.notebook import read_notebook, setup_cells, solution_cells

_NAMESPACES: dict[str, dict] = {}


def learner_namespace(path: str) -> dict:
    """Execute the notebook's setup and solution cells, in notebook order, once per notebook."""
    if path not in _NAMESPACES:
        nb = read_notebook(path)
        cells = sorted(setup_cells(nb) + solution_cells(nb), key=lambda c: c.index)
        namespace: dict = {"__name__": "__learner__"}
        errors = []
        for cell in cells:
            try:
                exec(compile(cell.source, f"{path} cell {cell.index}", "exec"), namespace)
            except NotImplementedError:
                pass  # an unanswered value cell; its check reports it
            except Exception as err:  # the learner's cell does not even run
                errors.append(f"cell {cell.index}: {type(err).__name__}: {err}")
        namespace["__cell_errors__"] = errors
        _NAMESPACES[path] = namespace
    return _NAMESPACES[path]


def test_exercise(notebook, module, exercise, check_name):
    namespace = learner_namespace(notebook)
    if exercise not in namespace:
        errors = namespace["__cell_errors__"]
        pytest.fail(f"{exercise} is not defined by the notebook's solution cells"
                    + (f"; cells that failed: {errors}" if errors else "; write it in its cell."))
    check = getattr(importlib.import_module(f"ftlib.checks.{module}"), check_name)
    check(namespace[exercise])
