"""Gradual unfreezing (ULMFiT): the head first, then more blocks from the top at each epoch."""
from __future__ import annotations

import math

from ftlib.techniques._registry import counts, entry

__all__ = ["gradual_unfreezing"]


def gradual_unfreezing(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, head_lr_multiplier=10.0,
                       blocks_per_epoch: int | None = None, seed=0, progress=False, **fit_kwargs) -> dict:
    """ULMFiT's gradual unfreezing: epoch 0 trains the head, then more blocks from the top.

    ``blocks_per_epoch`` defaults to as many as it takes to have every block unfrozen in
    the last epoch (a 3-epoch run of an 8-block MiniLM: head, then top 4, then all).
    """
    from ftlib.freezing import GradualUnfreezing, layer_blocks
    from ftlib.train import fit

    if blocks_per_epoch is None:
        blocks_per_epoch = max(1, math.ceil(len(layer_blocks(model)) / max(1, epochs - 1)))
    hook = GradualUnfreezing(model, blocks_per_epoch=blocks_per_epoch)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, head_lr_multiplier=head_lr_multiplier,
                  on_epoch_start=hook, seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, "blocks_per_epoch": blocks_per_epoch, **counts(model)}


TECHNIQUE = entry("gradual", gradual_unfreezing,
                  "gradual unfreezing from the top, head at {head_lr_multiplier:g}x lr",
                  ["head_lr_multiplier", "blocks_per_epoch"])
