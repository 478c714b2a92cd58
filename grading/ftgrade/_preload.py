"""Imported by the fork server of `ftlib grade`: what every worker needs, loaded once before any fork.

nbgrader (warmed by `prewarm`), and what the judge needs for any grade cell: torch, NumPy
and the checks' shared code, and the lazy set-up of torch's first optimizer (it imports
torch._dynamo: 1.5-1.7 s in every fresh process, which the learner's kernel has already
paid and the judge would pay per submission). Nothing here starts a thread of its own.
"""
from ftgrade.autograde import prewarm

try:
    prewarm()
    import ftlib.checks._common  # noqa: F401 (torch, numpy)
    import ftlib.checks.remote  # noqa: F401
    import ftgrade.judge  # noqa: F401
    import torch

    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
except Exception:  # only a speed-up: a worker that needs what failed here reports it itself
    pass
