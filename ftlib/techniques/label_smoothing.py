"""Label smoothing, written out: the reference for ``nn.CrossEntropyLoss(label_smoothing=s)``.

A regularizer of the loss rather than a ``--technique``: :func:`ftlib.train.fit` takes
``loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1)``, PyTorch's own;
:func:`label_smoothing_loss` computes the same loss by hand, as the reference the course
and the tests check against.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["label_smoothing_loss"]


def label_smoothing_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy against smoothed targets, written out (the reference formula).

    The target puts ``1 - smoothing`` on the true class and spreads ``smoothing``
    evenly over all ``K`` classes (the true one included, as PyTorch does)::

        loss = mean over examples of  (1 - s) * (-log p_y)  +  s * mean_k (-log p_k)

    It equals ``nn.CrossEntropyLoss(label_smoothing=s)(logits, labels)``.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0]])
    >>> labels = torch.tensor([0])
    >>> round(float(label_smoothing_loss(logits, labels, 0.0)), 4)  # plain cross-entropy
    0.1269
    """
    import torch.nn.functional as F

    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1); got {smoothing!r}.")
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (N, K) and labels (N,); got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}.")
    log_p = F.log_softmax(logits, dim=-1)  # (N, K)
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)  # (N,)
    uniform = -log_p.mean(dim=-1)  # (N,)
    return ((1.0 - smoothing) * nll + smoothing * uniform).mean()
