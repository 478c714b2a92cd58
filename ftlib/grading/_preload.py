"""Imported by the fork server of `ftlib grade`: what every worker needs, loaded once before any fork.

nbgrader (warmed by `prewarm`), and what the judge needs for any grade cell: torch, NumPy
and the checks' shared code (about 1.5 s of CPU a worker would otherwise spend). Only
imports: no thread is started, so forking afterwards is safe.
"""
from ftlib.grading.autograde import prewarm

try:
    prewarm()
    import ftlib.checks._common  # noqa: F401 (torch, numpy)
    import ftlib.checks._remote  # noqa: F401
    import ftlib.grading.judge  # noqa: F401
except Exception:  # only a speed-up: a worker that needs what failed here reports it itself
    pass
