"""Unit tests of the grading pieces that need no kernel: notebook reading, guard, limits, sandbox."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ftgrade import guard, sandbox
from ftgrade.limits import parse_memory, run_limited
from ftgrade.notebook import (
    NotebookError, duplicate_cell_ids, duplicate_grade_ids, grade_cells, imported_modules,
    is_setup_source, read_notebook, setup_cells, solution_cells)

import helpers


def test_cells_of_the_toy_source():
    nb = read_notebook(f"{helpers.FIXTURES}/ps1/ps1.ipynb")
    assert [c.grade_id for c in solution_cells(nb)] == ["add", "normalize"]
    assert [(c.grade_id, c.points) for c in grade_cells(nb)] == [
        ("test_add", 1), ("test_add_hidden", 2), ("test_normalize", 1), ("test_normalize_hidden", 2)]
    assert [c.source for c in setup_cells(nb)] == ["import numpy as np"]
    assert imported_modules([c.source for c in grade_cells(nb)]) == ["ps1_checks"]


@pytest.mark.parametrize("source, expected", [
    ("import torch\nfrom torch import nn", True),
    ('"""doc"""\ndef f():\n    return train()\nclass A:\n    pass', True),
    ("model = train()", False),
    ("%matplotlib inline", False),
    ("def f(:", False),
    ("", False),
])
def test_is_setup_source(source, expected):
    assert is_setup_source(source) is expected


def test_read_notebook_errors_are_clear(tmp_path):
    bad = tmp_path / "a.ipynb"
    bad.write_text("{nope")
    with pytest.raises(NotebookError, match="not valid JSON"):
        read_notebook(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(NotebookError, match="not a notebook"):
        read_notebook(bad)
    with pytest.raises(NotebookError, match="does not exist"):
        read_notebook(tmp_path / "missing.ipynb")
    with pytest.raises(NotebookError, match="ending in .ipynb"):
        read_notebook(tmp_path / "a.py")


def test_missing_metadata_and_duplicates(tmp_path):
    cells = [{"cell_type": "code", "source": ["x = 1"], "id": "a"},
             {"cell_type": "code", "source": "y", "id": "a", "metadata": {"nbgrader": {"grade": True, "grade_id": "t", "points": "lots"}}},
             {"cell_type": "code", "source": "z", "metadata": {"nbgrader": {"grade": True, "grade_id": "t"}}}]
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps({"cells": cells}))
    nb = read_notebook(path)
    assert [c.points for c in grade_cells(nb)] == [0.0, 0.0]
    assert duplicate_grade_ids(nb) == ["t"] and duplicate_cell_ids(nb) == ["a"]


def test_guard_restores_torch_numpy_and_checks():
    torch = pytest.importorskip("torch")
    import numpy as np

    guard.install(guard.watched_for(["torch", "numpy"]))
    real_allclose, real_eq = torch.allclose, torch.Tensor.__eq__
    torch.allclose = lambda *a, **k: True
    torch.Tensor.__eq__ = lambda self, other: True
    np.testing.assert_allclose = lambda *a, **k: None
    restored = guard.restore()
    assert {"torch.allclose", "torch.Tensor.__eq__", "numpy.testing.assert_allclose"} <= set(restored)
    assert torch.allclose is real_allclose and torch.Tensor.__eq__ is real_eq
    assert not torch.allclose(torch.zeros(2), torch.ones(2))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(1.0, 2.0)
    assert guard.restore() == []


def test_guard_does_not_call_a_library_wrapper_tampering():
    torch = pytest.importorskip("torch")

    guard.install(guard.watched_for(["torch"]))
    real = torch.manual_seed
    import torch._dynamo  # noqa: F401  wraps torch.manual_seed with functools.wraps
    torch.manual_seed = torch._disable_dynamo(real)
    assert guard.restore() == [] and torch.manual_seed is real
    torch.manual_seed = lambda seed: None  # a learner's replacement is still reported
    assert guard.restore() == ["torch.manual_seed"] and torch.manual_seed is real


def test_guard_ignores_a_library_cache_on_a_class_but_not_a_new_method(tmp_path, monkeypatch):
    """transformers sets `_can_set_experts_implementation_cached_value` on a model class when a
    model is built: a data attribute a library adds is not tampering; a method that shadows an
    inherited one is."""
    (tmp_path / "models_mod.py").write_text(
        "class Base:\n    def forward(self):\n        return 'real'\n\nclass Model(Base):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import models_mod

    guard.install(["models_mod"])
    models_mod.Model._can_set_experts_implementation_cached_value = True
    assert guard.restore() == []
    assert models_mod.Model._can_set_experts_implementation_cached_value is True
    models_mod.Model.forward = lambda self: "fake"
    assert guard.restore() == ["models_mod.Model.forward"] and models_mod.Model().forward() == "real"


@pytest.mark.parametrize("text, expected", [("2G", 2 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", 3 * 2**29),
                                            (None, None), ("none", None), (1024, 1024)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


def test_parse_memory_rejects_nonsense():
    with pytest.raises(ValueError, match="'lots'"):
        parse_memory("lots")


def test_run_limited_kills_on_memory_and_time():
    hog = [sys.executable, "-c", "b = []\nwhile True:\n    b.append(bytearray(50 * 2**20))\n    b[-1][::4096] = b'x' * len(b[-1][::4096])"]
    r = run_limited(hog, memory=300 * 2**20, timeout=60)
    assert r.status == "memory" and r.wall_s < 60
    r = run_limited([sys.executable, "-c", "while True: pass"], timeout=1)
    assert r.status == "timeout"
    r = run_limited([sys.executable, "-c", "print('hi')"], timeout=30, stdout=subprocess.DEVNULL)
    assert (r.status, r.returncode) == ("exited", 0)


@pytest.mark.skipif(not sandbox.available()[0], reason="bubblewrap sandbox not available here")
def test_sandbox_hides_paths_and_network(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "answer.txt").write_text("42")
    code = ("import os, socket\nprint(os.path.exists(%r))\n"
            "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('net')\n"
            "except OSError:\n    print('nonet')" % str(secret))
    out = subprocess.run(sandbox.wrap([sys.executable, "-c", code], hide=[str(secret)], writable=[],
                                      scratch=str(tmp_path)),
                         capture_output=True, text=True).stdout.split()
    assert out == ["False", "nonet"]
    with pytest.raises(ValueError, match="expose"):
        sandbox.wrap(["true"], hide=[str(secret)], writable=[str(tmp_path)], scratch=str(tmp_path))


def test_each_kernel_gets_its_share_of_the_cores():
    import os

    from ftgrade.worker import THREAD_VARIABLES, _thread_limits

    cores = len(os.sched_getaffinity(0))
    limits = _thread_limits(2, {})
    assert set(limits) == set(THREAD_VARIABLES)
    assert all(v == str(max(1, cores // 2)) for v in limits.values())
    assert _thread_limits(cores * 4, {})["OMP_NUM_THREADS"] == "1"  # never 0
    assert _thread_limits(1, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # the instructor's value wins


@pytest.mark.parametrize("source, found", [
    ("from ftlib.models import count_parameters as c\n", ["ftlib.models.count_parameters"]),
    ("import ftlib.models\ndef count_parameters(m):\n    return ftlib.models.count_parameters(m)\n",
     ["ftlib.models.count_parameters"]),
    ("from ftlib import models\ncount_parameters = getattr(models, 'count_parameters')\n",
     ["getattr(models, 'count_parameters')"]),
    ("count_parameters = __import__('ftlib.models').models.count_parameters\n",
     ["__import__('ftlib.models').models.count_parameters"]),
    ("def extract_features(b, l):\n    return ftlib_extract_features(b, l)\n", ["ftlib.techniques.features.extract_features"]),
    # honest answers, a helper of another step, and code that does not parse: nothing
    ("def count_parameters(m):\n    return sum(p.numel() for p in m.parameters())\n", []),
    ("from ftlib.freezing import set_frozen_batchnorm_eval\n", []),
    ("def count_parameters(m)\n", []),
])
def test_reference_uses_finds_ftlibs_answer_in_a_solution_cell(source, found):
    from ftgrade.judge import reference_aliases, reference_uses

    exercises = {"count_parameters", "extract_features"}
    # the course itself imports ftlib's version under another name for a comparison (08 does)
    aliases = reference_aliases(["from ftlib.techniques.features import extract_features as ftlib_extract_features\n"],
                                exercises)
    assert reference_uses(source, exercises, aliases) == found


def test_the_recorder_knows_the_workers_grader_failures():
    from ftgrade import autograde, results

    assert results._GRADER_FAILURES == (autograde.NO_NOTEBOOK, autograde.KERNEL_DID_NOT_START)
