"""The learner suite: ``pytest tests/learner --notebook PATH`` runs the course contracts on a notebook.

The notebook's setup cells (only imports and definitions) and solution cells run in a fresh
namespace, never its training or plotting cells; then each exercise's function is handed to
its check in ``ftlib.checks``, the same call the notebook's grade cell makes. Without
``--notebook`` the suite runs on every solution notebook (a self-test of the course).
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from ftlib.checks import ASSIGNMENTS, EXERCISES  # noqa: E402

# Graded answers that are values, not functions: name -> (checks module, check function).
VALUE_ANSWERS = {"hyperparameters": [("chosen_lr", "check_lr_choice")]}


def pytest_addoption(parser):
    parser.addoption("--notebook", action="append", default=[], metavar="PATH",
                     help="a course notebook to check (repeatable); default: every solution notebook")


def assignment_of(path: Path) -> str:
    """The assignment a notebook belongs to, from its file name (01_choose_model.ipynb...)."""
    for name in ASSIGNMENTS:
        if path.stem.startswith(name) or path.parent.name == name:
            return name
    raise pytest.UsageError(f"{path} is not a course notebook; expected a name starting with one of "
                            f"{sorted(ASSIGNMENTS)}.")


def _notebooks(config) -> list[Path]:
    given = [Path(p) for p in config.getoption("--notebook")]
    if given:
        missing = [str(p) for p in given if not p.exists()]
        if missing:
            raise pytest.UsageError(f"notebook not found: {missing}")
        return given
    root = Path(__file__).resolve().parents[2] / "solutions"
    return sorted(root.glob("*/*.ipynb"))


def pytest_generate_tests(metafunc):
    if "exercise" not in metafunc.fixturenames:
        return
    params, ids = [], []
    for path in _notebooks(metafunc.config):
        module = ASSIGNMENTS[assignment_of(path)]
        for exercise in EXERCISES[module]:
            params.append((str(path), module, exercise, f"check_{exercise}"))
            ids.append(f"{path.stem}::{exercise}")
        for name, check in VALUE_ANSWERS.get(module, []):
            params.append((str(path), module, name, check))
            ids.append(f"{path.stem}::{name}")
    metafunc.parametrize("notebook,module,exercise,check_name", params, ids=ids)
