"""Each exercise's reference in ftlib reads like its solution cell: the same parameters in the
same order and kind, and the solution's defaults; the reference may give a default where the
solution has none, and add parameters after them, each with a default (the runtime knobs a
learner's version leaves out), so any call the notebook makes works on both."""
import ast
import inspect
import json
from pathlib import Path

import pytest
from test_checks import CASES, _reference

from ftlib.checks import ASSIGNMENTS

ROOT = Path(__file__).parent.parent.parent
_ASSIGNMENT = {module: assignment for assignment, module in ASSIGNMENTS.items()}
_NO_DEFAULT = object()


def _solution_parameters(assignment: str, name: str) -> list[tuple[str, str, object]]:
    """``(name, kind, default)`` of the solution cell's ``def name`` (a class: its ``__init__``)."""
    nb = json.loads((ROOT / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:  # IPython magics
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                is_class = isinstance(node, ast.ClassDef)
                if is_class:
                    node = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
                args = node.args
                positional = args.posonlyargs + args.args
                defaults = [_NO_DEFAULT] * (len(positional) - len(args.defaults)) + list(args.defaults)
                params = [(a.arg, "positional", d) for a, d in zip(positional, defaults)]
                params += [(a.arg, "keyword", d if d is not None else _NO_DEFAULT)
                           for a, d in zip(args.kwonlyargs, args.kw_defaults)]
                return params[1:] if is_class else params
    raise LookupError(f"no solution cell defines {name} in {assignment}")


def _value(node):
    return _NO_DEFAULT if node is _NO_DEFAULT else ast.literal_eval(node)


@pytest.mark.parametrize("module,exercise", CASES)
def test_the_reference_has_the_solution_cells_signature(module, exercise):
    solution = _solution_parameters(_ASSIGNMENT[module], exercise)
    reference = [p for p in inspect.signature(_reference(module, exercise)).parameters.values()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert len(reference) >= len(solution), (solution, reference)
    for (name, kind, default), ref in zip(solution, reference):
        ref_kind = "keyword" if ref.kind == ref.KEYWORD_ONLY else "positional"
        assert (name, kind) == (ref.name, ref_kind), f"{exercise}: solution has {name} ({kind}), reference {ref}"
        if default is not _NO_DEFAULT:
            assert ref.default is not inspect.Parameter.empty and _value(default) == ref.default, \
                f"{exercise}: {name} defaults to {_value(default)!r} in the solution, to {ref.default!r} in the reference"
    extra = [p.name for p in reference[len(solution):] if p.default is inspect.Parameter.empty]
    assert not extra, f"{exercise}: the reference's extra parameters {extra} have no default"
