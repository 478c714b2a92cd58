"""Checks of arguments, shared by the library and the command line.

One message template: ``lr must be a number > 0; got 0.`` names the Python argument, and
the command line shows the same error with its flag (``--lr must be a number > 0; got 0.``):
:class:`ArgumentError` keeps the name, and ``ftlib.cli`` rewrites it when the command has
such a flag. ``True`` is never an integer here, although Python's ``bool`` is one.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["ArgumentError", "integer", "number", "one_of"]


class ArgumentError(ValueError):
    """A bad argument: ``name`` (the Python name), what it must be, and what it was."""

    def __init__(self, name: str, requirement: str, value: Any) -> None:
        self.name, self.requirement, self.value = name, requirement, value
        super().__init__(f"{name} {requirement}; got {value!r}.")

    def as_flag(self) -> str:
        """The same message naming the command-line flag: ``--batch-size`` for ``batch_size``."""
        return f"--{self.name.replace('_', '-')} {self.requirement}; got {self.value!r}."


def _meaning(meaning: str) -> str:
    return f" ({meaning})" if meaning else ""


def integer(value: Any, name: str, *, minimum: int = 1, meaning: str = "") -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``, else :class:`ArgumentError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ArgumentError(name, f"must be {kind}{_meaning(meaning)}", value)
    return value


def number(value: Any, name: str, *, minimum: float = 0.0, inclusive: bool = False, meaning: str = "") -> float:
    """``value`` if it is a finite real number above ``minimum`` (or equal, with ``inclusive``)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value >= minimum if inclusive else value > minimum))
    if not ok:
        raise ArgumentError(name, f"must be a number {'>=' if inclusive else '>'} {minimum:g}{_meaning(meaning)}",
                            value)
    return value


def one_of(value: Any, name: str, choices: Iterable) -> Any:
    """``value`` if it is one of ``choices``, else :class:`ArgumentError` listing them."""
    choices = list(choices)
    if value not in choices:
        raise ArgumentError(name, f"must be one of {choices}", value)
    return value
