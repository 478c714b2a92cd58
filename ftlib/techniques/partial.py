"""Partial fine-tuning: the bottom blocks frozen, everything above trains as in full fine-tuning."""
from __future__ import annotations

from ftlib.techniques._registry import counts, entry

__all__ = ["partial_finetune"]


def partial_finetune(model, train_loader, val_loader=None, *, frozen_blocks=1, epochs=3, lr=1e-4, seed=0,
                     progress=False, **fit_kwargs) -> dict:
    """Fine-tuning with the lowest ``frozen_blocks`` blocks frozen; everything above trains at ``lr``.

    ``frozen_blocks=1`` freezes a transformer's embeddings only: about half of MiniLM's
    weights (its 30,522 x 384 token table), which fine-tuning on a few thousand texts
    barely moves, and whose gradient and AdamW update cost a fifth of each training
    step on a CPU. Backward stops at the lowest trainable block, so each frozen layer
    above the embeddings saves its backward pass too.
    """
    from ftlib.freezing import freeze_bottom, layer_blocks
    from ftlib.train import fit

    blocks = [name for name, _ in layer_blocks(model)]
    if not 0 <= frozen_blocks < len(blocks):
        raise ValueError(f"frozen_blocks must be between 0 and {len(blocks) - 1} (at least the top block trains); "
                         f"got {frozen_blocks!r}. This model's blocks, bottom first: {', '.join(blocks)}.")
    freeze_bottom(model, frozen_blocks)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, **counts(model)}


TECHNIQUE = entry("partial", partial_finetune,
                  "the bottom blocks frozen (default {frozen_blocks}: the embeddings), the rest as full",
                  ["frozen_blocks"])
