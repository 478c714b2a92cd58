"""Imports between ftlib's modules flow one way: no module imports another that imports it back.

Every import counts, the ones inside functions too (they only hide a cycle from Python's
import machinery), so the layers stay visible: the steps and the pipelines on top, a small
shared core (`devices`, `progress`, `heads`, `data.registry`...) below.
"""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "ftlib"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _target(name: str, modules) -> str | None:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules else None


def import_graph() -> dict[str, set[str]]:
    """Module -> the ftlib modules it imports anywhere in its code (package imports excluded)."""
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names]
            for name in names:
                target = _target(name, modules) if name.startswith("ftlib") else None
                # `from ftlib import x` names the package: ftlib/__init__ only re-exports lazily.
                if target and target != module and target != "ftlib":
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.add(frozenset(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_ftlib_modules():
    found = cycles(import_graph())
    assert not found, f"import cycles (imports inside functions count): {[sorted(c) for c in found]}"


def test_the_cycle_finder_sees_imports_inside_functions():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == {frozenset("abc")}
    assert "ftlib.devices" in import_graph()["ftlib.optim"]  # lr_range_test's import, inside the function


def test_a_cycle_through_an_import_inside_a_function_fails_the_check(tmp_path, monkeypatch):
    # A copy of two modules where the lower one imports the upper one inside a function.
    package = tmp_path / "ftlib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from ftlib.high import g\n    return g\n")
    (package / "high.py").write_text("from ftlib.low import f\n\ndef g():\n    return f\n")
    (package / "other.py").write_text("from . import low\n")  # relative imports count too
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    graph = import_graph()
    assert graph["ftlib.other"] == {"ftlib.low"}
    assert cycles(graph) == {frozenset({"ftlib.low", "ftlib.high"})}


def test_no_public_name_of_ftlib_is_also_one_of_its_modules():
    """`ftlib.evaluate` was the function train.evaluate until the submodule was imported, then the
    module: in a process that re-imported ftlib, `from ftlib import evaluate` gave the function and
    three wrong answers of the course "failed" their checks with an AttributeError."""
    import ftlib

    modules = {p.stem for p in Path(ftlib.__file__).parent.glob("*.py")} | {
        p.name for p in Path(ftlib.__file__).parent.iterdir() if (p / "__init__.py").exists()}
    assert not set(ftlib.__all__) & modules


def test_from_ftlib_import_a_module_gives_the_module_even_after_ftlib_is_imported_afresh():
    code = ("import inspect, sys\n"
            "import ftlib.evaluate\n"
            "del sys.modules['ftlib']  # as a test that re-imports the package does\n"
            "from ftlib import evaluate\n"
            "import ftlib.evaluate as ev\n"
            "assert inspect.ismodule(evaluate) and evaluate is ev, (evaluate, ev)\n"
            "from ftlib import fit\n"
            "assert callable(fit)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
