"""The layers of the repository: the teaching core, the machinery beside it, the grader apart.

- the teaching core (every ``ftlib`` module but the machinery) imports nothing from the
  machinery (the command, the run configuration, the runner and its jobs, ``compare``,
  reporting) nor from the grader;
- ``ftlib`` never imports the grader (``ftgrade``, a distribution of its own), except the
  ``ftlib`` command, which hands ``check`` and ``grade`` to it;
- importing the grader imports no torch (an instructor's ``ftlib grade`` process stays small).
"""
import ast
import subprocess
import sys
from pathlib import Path

from test_imports import import_graph

ROOT = Path(__file__).parent.parent
MACHINERY = {"ftlib.cli", "ftlib.__main__", "ftlib.config", "ftlib.runner", "ftlib.pipeline", "ftlib.pipeline_llm",
             "ftlib.pipeline_preference", "ftlib.compare", "ftlib.reporting"}
# The forkserver's preload: its one job is to import, before forking, what learner kernels need.
GRADER_PRELOAD = "ftgrade._preload"


def test_the_teaching_core_imports_nothing_from_the_machinery():
    graph = import_graph()
    assert MACHINERY <= set(graph), f"machinery modules not found: {sorted(MACHINERY - set(graph))}"
    wrong = {m: sorted(t & MACHINERY) for m, t in graph.items() if m not in MACHINERY and t & MACHINERY}
    assert not wrong, f"teaching-core modules import the machinery: {wrong}"


def _imports_grader(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n == "ftgrade" or n.startswith("ftgrade.") for n in names):
            return True
    return False


def test_only_the_command_imports_the_grader():
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ftlib").rglob("*.py") if _imports_grader(p))
    assert importers == ["ftlib/cli.py"], importers


def test_the_grader_is_not_inside_the_learner_library():
    import ftgrade

    assert not (ROOT / "ftlib" / "grading").exists()
    assert Path(ftgrade.__file__).parent == ROOT / "grading" / "ftgrade"


def test_importing_the_grader_imports_no_torch():
    modules = sorted(f"ftgrade.{p.stem}" for p in (ROOT / "grading" / "ftgrade").glob("*.py") if p.stem != "__init__")
    modules = [m for m in modules if m != GRADER_PRELOAD]
    assert len(modules) > 10, modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers', 'peft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing the grader imported: {out[:300]}"


def test_without_the_grader_check_and_grade_say_how_to_install_it(monkeypatch, capsys):
    from ftlib.cli import main

    for name in ("ftgrade", "ftgrade.check", "ftgrade.grade"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: import raises ModuleNotFoundError
    for command in ("check", "grade"):
        assert main([command, "--help"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"ftlib {command}:" in err and "pip install -e ./grading" in err, err


def _private_imports(path: Path, package: str) -> list[str]:
    """``from ftlib.x import _name`` anywhere in ``path``, or a private module of another package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("ftlib", "ftgrade"):
            parts = node.module.split(".")
            private_module = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
            if private_module is not None and ".".join(parts[:private_module]) != package:
                found.append(f"{path.name}: from {node.module} import ...")
            own_modules = node.module == package  # `from ftgrade import _runner`: a private module of its own package
            found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not own_modules]
    return found


def test_no_module_imports_another_modules_private_names():
    found = []
    for root in (ROOT / "ftlib", ROOT / "grading" / "ftgrade"):
        for path in root.rglob("*.py"):
            package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
            found += _private_imports(path, package)
    assert not found, found


def test_the_generative_modules_sit_together_on_top_of_the_steps():
    """``ftlib.generative`` uses the steps (``fit``, the devices); the steps and techniques never use it,
    only the generative jobs, the command's ``generate`` and ``chat``, and the course's checks do."""
    graph = import_graph()
    generative = {m for m in graph if m == "ftlib.generative" or m.startswith("ftlib.generative.")}
    assert {"ftlib.generative.sft", "ftlib.generative.forgetting"} <= generative, sorted(generative)
    users = sorted(m for m, t in graph.items() if t & generative and m not in generative)
    jobs = {"ftlib.cli", "ftlib.pipeline_llm", "ftlib.pipeline_preference"}
    assert [m for m in users if m not in jobs and not m.startswith("ftlib.checks.")] == [], users
    assert jobs | {"ftlib.checks.llm_finetuning"} <= set(users), users
