"""Progress bars for the training loops, and one line per phase where bars do not belong.

In Jupyter or a terminal, tqdm bars with a time estimate; off a terminal (a log file,
CI, ``nohup``) each phase prints one line with its time when it ends.
"""
from __future__ import annotations

import os
import sys
import time

from ftlib.devices import is_main_process

__all__ = ["progress_style", "progress_bar"]


def progress_style() -> str:
    """``"bars"`` in Jupyter or when stderr is a terminal, else ``"lines"``.

    Progress bars redraw themselves with carriage returns, which a log file, CI or
    ``nohup`` keeps as hundreds of fragments; off a terminal each phase prints one line
    with its time instead. ``FTLIB_PROGRESS=bars`` or ``=lines`` overrides the guess.
    """
    forced = os.environ.get("FTLIB_PROGRESS", "").strip().lower()
    if forced in ("bars", "lines"):
        return forced
    if _in_jupyter():
        return "bars"
    stream = sys.stderr
    return "bars" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "lines"


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


class _Lines:
    """A stand-in for a tqdm bar off a terminal: one line per phase, when it ends."""

    def __init__(self, iterable, desc: str = "", unit: str = "step", **_):
        self.iterable, self.desc, self.unit = iterable, desc, unit

    def __iter__(self):
        start, n = time.perf_counter(), 0
        for n, item in enumerate(self.iterable, 1):
            yield item
        unit = self.unit if n == 1 else {"batch": "batches"}.get(self.unit, self.unit + "s")
        print(f"{self.desc}: {n} {unit} in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)

    def set_postfix(self, **_) -> None:
        """Live figures belong to a bar; the epoch's summary line carries them here."""

    @staticmethod
    def write(text: str) -> None:
        print(text, flush=True)  # where tqdm.write prints too


def progress_bar(iterable, enabled: bool, *, leave: bool = False, **kwargs):
    """``iterable`` shown as it is consumed when ``enabled``: a bar, or one line per phase.

    What the training loops show (see :func:`progress_style`); under ``accelerate launch``
    only the main process shows it. ``desc=`` names the phase; ``leave`` keeps the bar when done.
    """
    if not enabled or not is_main_process():  # under `accelerate launch`, one process shows progress
        return iterable
    if progress_style() == "lines":
        return _Lines(iterable, **kwargs)
    import warnings

    from tqdm import TqdmExperimentalWarning

    # A widget in Jupyter, text in a terminal. Not tqdm.auto: in a terminal that is the
    # asyncio tqdm, which calls iter() on the loader once more when the bar is made, and
    # each DataLoader iterator draws a seed from the loader's generator; the shuffling
    # order, and so the results, would then depend on whether bars are shown.
    with warnings.catch_warnings():  # what tqdm.auto does too
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        from tqdm.autonotebook import tqdm

    return tqdm(iterable, leave=leave, dynamic_ncols=True, **kwargs)
