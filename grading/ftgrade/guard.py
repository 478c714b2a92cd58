"""Undo learner monkeypatching of the checking code before each grade cell runs.

Grade cells run in the same Python process as the learner's code (nbgrader's model),
so a learner can replace ``numpy.testing.assert_allclose``, ``torch.allclose`` or a
function of the checks module by one that always passes. `install` records the
watched modules before any learner code runs; `restore` puts every changed callable,
class attribute, function body (``__code__``) and ``sys.modules`` entry back and
returns what it had to restore, so graders can flag the submission.

This is defence in depth, not a sandbox: code in the same process can always defeat
it with enough effort. Checks must also compare types strictly (an object whose
``__eq__`` is always true) and the process must be sandboxed (see `sandbox`).
Standard library only: it runs inside learners' kernels.
"""
from __future__ import annotations

import builtins
import importlib
import sys
import types

__all__ = ["install", "restore", "restore_report", "watched_for"]

# IPython adds and removes these around every cell; they are not tampering.
_VOLATILE_BUILTINS = {"get_ipython", "display", "exit", "quit", "__IPYTHON__", "_", "__", "___"}

_state: dict = {}


def watched_for(modules: list[str]) -> list[str]:
    """Return the modules to guard for checks that import ``modules``.

    Adds ``builtins``, ``math``, ``operator``, each imported package's parents, and the
    testing helpers of numpy and torch when those libraries are used.
    """
    out = ["builtins", "math", "operator"]
    for name in modules:
        parts = name.split(".")
        out += [".".join(parts[: i + 1]) for i in range(len(parts))]
        if parts[0] == "numpy":
            out += ["numpy", "numpy.testing"]
        if parts[0] == "torch":
            out += ["torch", "torch.testing", "torch.nn.functional"]
    return list(dict.fromkeys(out))


def _is_restorable(value) -> bool:
    return callable(value) or isinstance(value, types.ModuleType)


def install(modules: list[str]) -> list[str]:
    """Import ``modules`` and record their state; return the names that could not be imported.

    Call it before any learner code runs. Calling it again replaces the record.
    """
    record, failed = {}, []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception:  # a missing optional library is not an error here
            failed.append(name)
            continue
        attrs = {k: v for k, v in vars(mod).items() if _is_restorable(v)}
        funcs = {
            k: (v.__code__, v.__defaults__, v.__kwdefaults__)
            for k, v in attrs.items()
            if isinstance(v, types.FunctionType)
        }
        classes = {
            k: dict(vars(v)) for k, v in attrs.items() if isinstance(v, type) and not _is_builtin_type(v)
        }
        record[name] = (mod, attrs, funcs, classes)
    _state["record"] = record
    return failed


def _is_builtin_type(cls: type) -> bool:
    # Static C types cannot be patched, so there is nothing to restore or compare.
    return not cls.__flags__ & (1 << 9)  # Py_TPFLAGS_HEAPTYPE


def restore() -> list[str]:
    """Put the recorded modules back as they were; return what had been changed.

    Returns
    -------
    list of str
        Dotted names that were restored, e.g. ``["numpy.testing.assert_allclose"]``.
        Empty when nothing was tampered with (or `install` was never called).
    """
    changed = []
    for name, (mod, attrs, funcs, classes) in _state.get("record", {}).items():
        if sys.modules.get(name) is not mod:
            sys.modules[name] = mod
            changed.append(f"sys.modules[{name!r}]")
        current = vars(mod)
        for key, value in attrs.items():
            if mod is builtins and key in _VOLATILE_BUILTINS:
                continue
            now = current.get(key)
            if now is not value:
                current[key] = value
                # A functools.wraps wrapper of the original is a library's doing, not
                # tampering: importing torch._dynamo wraps torch.manual_seed. Put back all the same.
                if getattr(now, "__wrapped__", None) is not value:
                    changed.append(f"{name}.{key}")
        for key, (code, defaults, kwdefaults) in funcs.items():
            fn = attrs[key]
            if fn.__code__ is not code or fn.__defaults__ is not defaults or fn.__kwdefaults__ is not kwdefaults:
                fn.__code__, fn.__defaults__, fn.__kwdefaults__ = code, defaults, kwdefaults
                changed.append(f"{name}.{key}.__code__")
        for key, saved in classes.items():
            cls = attrs[key]
            now = vars(cls)
            for attr, value in saved.items():
                if now.get(attr) is not value and _is_restorable(value):
                    try:
                        setattr(cls, attr, value)
                    except (AttributeError, TypeError):
                        continue
                    changed.append(f"{name}.{key}.{attr}")
            for attr in [a for a in now if a not in saved]:
                # A new class attribute can shadow an inherited method (Tensor.__eq__). A new data
                # attribute that shadows nothing is a library's cache (transformers caches
                # `_can_set_experts_implementation_cached_value` on a model class), not tampering.
                if not _is_restorable(now[attr]) and not any(attr in vars(base) for base in cls.__mro__[1:]):
                    continue
                try:
                    delattr(cls, attr)
                except (AttributeError, TypeError):
                    continue
                changed.append(f"{name}.{key}.{attr}")
    return sorted(set(changed))


def restore_report() -> str:
    """`restore`, returned as one comma-separated string (for a kernel's user_expressions)."""
    return ",".join(restore())
