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
    from ftlib.freezing import GradualUnfreezing, layer_blocks, unfreeze
    from ftlib.optim import adamw, param_groups
    from ftlib.train import fit

    if blocks_per_epoch is None:
        blocks_per_epoch = max(1, math.ceil(len(layer_blocks(model)) / max(1, epochs - 1)))
    callback = GradualUnfreezing(model, blocks_per_epoch=blocks_per_epoch)
    # Every block goes into the optimizer, the ones unfrozen in later epochs included;
    # the callback freezes all but the head before the first epoch.
    unfreeze(model)
    optimizer = adamw(param_groups(model, lr, head_lr_multiplier))
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer, callbacks=[callback],
                  seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, "blocks_per_epoch": blocks_per_epoch, **counts(model)}


TECHNIQUE = entry("gradual", gradual_unfreezing,
                  "gradual unfreezing from the top, head at {head_lr_multiplier:g}x lr",
                  ["head_lr_multiplier", "blocks_per_epoch"])
