"""Where ftlib keeps what it makes on disk: one function, imported by the library and the grader.

No torch here, so the grader (``ftgrade``), which imports no torch, reads the same place.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

__all__ = ["cache_dir"]


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where ftlib caches converted weights: ``$FTLIB_CACHE``, else ``$XDG_CACHE_HOME/ftlib``,
    else ``~/.cache/ftlib`` (the XDG base-directory convention).

    ``environ`` defaults to this process's environment; the grader passes the one it gives a kernel.
    """
    environ = os.environ if environ is None else environ
    if environ.get("FTLIB_CACHE"):
        return Path(environ["FTLIB_CACHE"]).expanduser()
    xdg = environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ftlib"
