"""Imports between ftlib's modules flow one way: no new cycles, and the known ones shrink.

Every import counts, the ones inside functions too (they only hide a cycle from Python's
import machinery). The cycles that exist today are listed; the test fails on any other,
and on a listed one that is gone (so the list is kept honest as the library is re-layered).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "ftlib"

# Strongly connected groups of modules, with the imports that close them.
KNOWN_CYCLES = {
    # grade runs a class on a cluster; cluster reuses grade's helpers
    frozenset({"ftlib.grading.cluster", "ftlib.grading.grade"}),
}


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


def test_no_new_import_cycles_between_ftlib_modules():
    found = cycles(import_graph())
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not new, f"new import cycles (imports inside functions count): {new}"
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_the_cycle_finder_sees_imports_inside_functions():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == {frozenset("abc")}
    assert "ftlib.devices" in import_graph()["ftlib.optim"]  # lr_range_test's import, inside the function
