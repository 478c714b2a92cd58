"""Shared machinery of the exercise checks: failures, quiet execution, trusted conversions.

Every check follows one pattern: build fresh inputs (tiny seeded models and data), run the
learner's function and the reference on copies of them, convert both results to plain
Python / NumPy through trusted paths, compare, and verify properties (input not mutated,
mode restored...). A failed comparison raises :class:`CheckFailure` whose message says
what was expected, what was found and a hint.

The comparison helpers below were captured when this module was imported, before any
learner code ran, so replacing ``torch.allclose`` or ``numpy.allclose`` in a notebook does
not change a verdict; returned values are converted by exact type, never through their
own ``__eq__``, ``__int__`` or ``__float__``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import sys
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = [
    "CheckFailure",
    "quiet",
    "expect",
    "first_difference",
    "call",
    "as_int",
    "as_float",
    "as_array",
    "as_tuple",
    "allclose",
    "array_equal",
    "state_snapshot",
    "same_state",
    "tiny_image_loader",
    "BNNet",
]

# Trusted references, captured at import time (before any learner code runs).
_np_allclose = np.allclose
_np_array_equal = np.array_equal
_np_asarray = np.asarray
_np_array = np.array
_torch_tensor_type = torch.Tensor
_detach = torch.Tensor.detach
_cpu = torch.Tensor.cpu
_numpy = torch.Tensor.numpy
_clone = torch.Tensor.clone
_isfinite = math.isfinite
_deepcopy = copy.deepcopy
_NP_INT = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
_NP_FLOAT = (np.float16, np.float32, np.float64)


class CheckFailure(AssertionError):
    """An exercise does not meet its contract; the message says what, found and a hint."""

    def __init__(self, what: str, expected: Any = None, found: Any = None, hint: str | None = None) -> None:
        lines = [what]
        if expected is not None:
            lines.append(f"  expected: {_short(expected)}")
        if found is not None:
            lines.append(f"  found:    {_short(found)}")
        if hint:
            lines.append(f"  hint:     {hint}")
        super().__init__("\n".join(lines))

    def _render_traceback_(self) -> list[str]:
        """What Jupyter shows for a failed check: its message and the learner's own lines.

        IPython calls this hook instead of printing the whole traceback, which would run
        through 20-40 lines of ``ftlib.checks`` before reaching the message. The cell still
        fails (nbgrader records the error and gives no points); only the display is short.
        """
        what, *details = str(self).splitlines()
        lines = [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {what}", *details]
        cause = self.__cause__
        if cause is not None:  # the learner's function crashed: where, in their code
            lines += [f"  in your code: {where}" for where in where_in_learner_code(self)]
        lines += [f"  checked by:   {where}" for where in _cells(self.__traceback__)[:1]]
        return lines


def where_in_learner_code(failure: BaseException) -> list[str]:
    """Where, in notebook cells, the learner's code raised the error behind ``failure`` (last two)."""
    cause = failure.__cause__
    return _cells(cause.__traceback__)[-2:] if cause is not None else []


def _cells(tb) -> list[str]:
    """``Cell In[5], line 3, in replace_head: <the line>`` for each frame in a notebook cell."""
    import linecache
    import traceback

    ip = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    out = []
    for frame in traceback.extract_tb(tb):
        name = frame.filename
        if not (name.startswith("<") or "ipykernel_" in name):
            continue  # library code (ftlib.checks, torch): not the learner's
        label = ip.compile.format_code_name(name) if ip is not None and hasattr(ip, "compile") else None
        cell = " ".join(label) if label else name.strip("<>")
        code = (frame.line or linecache.getline(name, frame.lineno or 0)).strip()
        where = f"{cell}, line {frame.lineno}" + ("" if frame.name == "<module>" else f", in {frame.name}")
        out.append(f"{where}: {code}" if code else where)
    return out


def error_text(err: BaseException, limit: int = 2000) -> str:
    """``str(err)``, cut to ``limit`` characters, for a message: a learner's exception's text,
    or ``<TypeName>`` when its ``__str__`` itself fails."""
    try:
        return str(err)[:limit]
    except Exception:  # a learner's exception whose __str__ fails
        return f"<{type(err).__name__}>"


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_difference(want: Any, got: Any, *, context: int = 4) -> tuple[str, str, str] | None:
    """Where two arrays of the same shape first differ, as ``(where, expected, found)`` windows.

    A wall of 40 ``-100`` in "expected" and "found" hides the one position that matters;
    this names it (``row 1, position 23``) and shows ``context`` values either side, the
    differing one marked ``>7<``. None when the shapes differ or nothing does.
    """
    a, b = _np_asarray(want), _np_asarray(got)
    if a.shape != b.shape or a.ndim == 0:
        return None
    diff = _np_asarray(a != b)
    if not diff.any():
        return None
    first = [int(i) for i in np.argwhere(diff)[0]]
    *row, pos = first
    lo, hi = max(0, pos - context), min(a.shape[-1], pos + context + 1)

    def window(x) -> str:
        values = x[tuple(row)] if row else x
        cells = [f">{values[i]}<" if i == pos else str(values[i]) for i in range(lo, hi)]
        return "[" + ("..., " if lo > 0 else "") + ", ".join(cells) + (", ..." if hi < a.shape[-1] else "") + "]"

    where = (f"row {row[0]}, " if len(row) == 1 else f"index {tuple(row)}, " if row else "") + \
        f"position {pos} of {a.shape[-1]}"
    return where, window(a), window(b)


def expect(condition: bool, what: str, expected: Any = None, found: Any = None, hint: str | None = None) -> None:
    """Raise :class:`CheckFailure` unless ``condition`` is exactly ``True``."""
    if condition is not True:
        raise CheckFailure(what, expected, found, hint)


@contextlib.contextmanager
def quiet():
    """Silence warnings, logging, progress bars and stderr while a check runs.

    nbgrader gives zero points to a grade cell that writes to stderr, and torch,
    transformers and tqdm all write there.
    """
    saved_env = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    hf = None
    if "transformers" in sys.modules:  # never import it just to silence it
        from transformers.utils import logging as hf  # noqa: PLC0415

        hf_level = hf.get_verbosity()
        hf.set_verbosity_error()
        hf.disable_progress_bar()
    stderr = sys.stderr
    sys.stderr = io.StringIO()
    # Checks run tiny models: one thread is much faster than several fighting for shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(threads)
        sys.stderr = stderr
        if hf is not None:
            hf.set_verbosity(hf_level)
            hf.enable_progress_bar()
        if saved_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved_env


def call(fn: Callable, *args, name: str, **kwargs):
    """Call the learner's function; turn 'not written yet' and crashes into clear failures."""
    if not callable(fn):
        raise CheckFailure(f"{name} should be a function (or class).", "a callable", type(fn).__name__)
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailure(
            f"{name} is not implemented yet.",
            hint="Replace `raise NotImplementedError()` with your code, run its cell, then run this check again.",
        ) from None
    except CheckFailure:
        raise
    except Exception as err:  # the learner's bug: say on what and where; keep the traceback
        inputs = ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()])
        models = sorted({type(a).__name__ for a in args if type(a).__name__ in _REBUILDABLE})
        rebuild = f" (`from ftlib.checks import {', '.join(models)}` builds the same model)" if models else ""
        raise CheckFailure(
            f"{name}({inputs}) raised {type(err).__name__}: {err}",
            hint=f"Call it on the same kind of input in the scratch cell below the exercise{rebuild}.",
        ) from err


# Test inputs a learner can rebuild from ftlib.checks to reproduce a failure.
_REBUILDABLE = {"BNNet"}


def _describe(value: Any) -> str:
    """A short name for a check's input: the class of a model, the shape of a tensor."""
    if isinstance(value, nn.Module):
        return f"<{type(value).__name__} model>"
    if isinstance(value, torch.Tensor):
        return f"<tensor of shape {tuple(value.shape)}>"
    if isinstance(value, (list, tuple)) and value and all(isinstance(b, dict) for b in value):
        first = ", ".join(f"{k}: {_describe(v)}" for k, v in value[0].items())
        return f"<{len(value)} batches like {{{first}}}>"  # enough to build the same in a scratch cell
    if isinstance(value, (list, tuple)) and len(value) > 3:
        return f"<{type(value).__name__} of {len(value)}>"
    return _short(value, 40)


def as_int(value: Any, what: str) -> int:
    """A plain int from an int, a NumPy integer or a 0-d integer tensor (exact types only)."""
    if type(value) is int:
        return value
    if type(value) in _NP_INT:
        return int(_np_array(value, dtype=np.int64))
    if type(value) is _torch_tensor_type and value.ndim == 0 and not value.is_floating_point():
        return int(_numpy(_cpu(_detach(value))).astype(np.int64))
    raise CheckFailure(f"{what} should be an integer.", "int", f"{type(value).__name__}: {_short(value)}",
                       "Return a plain Python int, e.g. int(x) or tensor.item().")


def as_int_list(value: Any, what: str) -> list[int]:
    """A list of Python ints, as a tokenizer gives token ids (no tensors, arrays or NumPy ints)."""
    expect(isinstance(value, list), f"{what} should be a list of ints.", "list", type(value).__name__,
           "Build it with Python lists, as tokenizer(...)['input_ids'] gives them (the collator makes the tensors).")
    expect(all(type(v) is int for v in value), f"{what} should hold Python ints.", "int",
           sorted({type(v).__name__ for v in value}), "Use tokenizer(...)['input_ids'], which gives plain ints.")
    return list(value)


def as_float(value: Any, what: str) -> float:
    """A plain float from a float/int, a NumPy scalar or a 0-d tensor (exact types only)."""
    if type(value) in (float, int):
        result = float(value)
    elif type(value) in _NP_FLOAT + _NP_INT:
        result = float(_np_array(value, dtype=np.float64))
    elif type(value) is _torch_tensor_type and value.numel() == 1:
        result = float(_numpy(_cpu(_detach(value))).astype(np.float64).reshape(()))
    else:
        raise CheckFailure(f"{what} should be a number.", "float", f"{type(value).__name__}: {_short(value)}",
                           "Return a plain Python float, e.g. float(x) or tensor.item().")
    return result


def as_array(value: Any, what: str, dtype=None) -> np.ndarray:
    """A fresh NumPy array from an ndarray, a tensor or a list (exact types only)."""
    if type(value) is np.ndarray:
        out = _np_array(value, copy=True)
    elif type(value) is _torch_tensor_type or type(value) is nn.Parameter:
        out = _np_array(_numpy(_cpu(_detach(value))), copy=True)
    elif type(value) in (list, tuple):
        out = _np_array([as_float(v, what) if not isinstance(v, (list, tuple)) else as_array(v, what) for v in value])
    else:
        raise CheckFailure(f"{what} should be an array.", "numpy.ndarray or torch.Tensor",
                           f"{type(value).__name__}", "Return a NumPy array (np.asarray) or a tensor.")
    return out.astype(dtype) if dtype is not None else out


def as_tuple(value: Any, length: int, what: str) -> tuple:
    if type(value) not in (tuple, list) or len(value) != length:
        found = f"{type(value).__name__}" + (f" of length {len(value)}" if type(value) in (tuple, list) else "")
        raise CheckFailure(f"{what} should return a tuple of {length} values.", f"tuple of {length}", found)
    return tuple(value)


def allclose(a: np.ndarray, b: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    a, b = _np_asarray(a), _np_asarray(b)
    return bool(a.shape == b.shape and _np_allclose(a, b, rtol=rtol, atol=atol))


def array_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(_np_array_equal(_np_asarray(a), _np_asarray(b)))


def state_snapshot(model: nn.Module) -> dict[str, np.ndarray]:
    """Copies of every parameter and buffer as NumPy arrays."""
    return {k: _np_array(_numpy(_cpu(_detach(v))), copy=True) for k, v in model.state_dict().items()}


def same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 0.0) -> list[str]:
    """Names whose values differ between two snapshots (or that exist in only one)."""
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in a or n not in b or a[n].shape != b[n].shape
            or not (array_equal(a[n], b[n]) if atol == 0 else _np_allclose(a[n], b[n], rtol=0, atol=atol))]


def finite(x: float) -> bool:
    return _isfinite(x)


def deepcopy(x):
    return _deepcopy(x)


class BNNet(nn.Module):
    """A tiny convnet with BatchNorm and Dropout: train and eval modes give different outputs."""

    def __init__(self, num_classes: int = 3, width: int = 6, p: float = 0.5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            for _ in range(2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, H, W)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(self.drop(self.pool(x).flatten(1)))  # (B, num_classes)


def tiny_image_loader(n: int = 30, num_classes: int = 3, size: int = 8, batch_size: int = 8, seed: int = 0) -> list[dict]:
    """A list of dict batches (the last one smaller): a learnable, seeded image task."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[torch.arange(n), labels % 3] += 1.0
    return [{"pixel_values": x[i:i + batch_size].clone(), "labels": labels[i:i + batch_size].clone()}
            for i in range(0, n, batch_size)]


class ModeSpy(nn.Module):
    """Wraps a model and records the mode and gradient state of each forward call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.inner.training, torch.is_grad_enabled()))
        return self.inner(x)
