"""Discriminative fine-tuning: layer-wise learning rates, the head fastest (ULMFiT; Sun et al. 2019)."""
from __future__ import annotations

from ftlib.techniques._registry import counts, entry

__all__ = ["discriminative"]


def discriminative(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, layer_decay=0.95,
                   head_lr_multiplier=10.0, seed=0, progress=False, **fit_kwargs) -> dict:
    """Discriminative fine-tuning: the top block at ``lr``, each block below ``layer_decay`` times slower.

    The head learns at ``lr * head_lr_multiplier``. 0.95 per layer is Sun et al.'s value
    for BERT; ULMFiT divides by 2.6 per block (``layer_decay=1/2.6``).
    """
    from ftlib.freezing import unfreeze
    from ftlib.optim import adamw, param_groups
    from ftlib.train import fit

    unfreeze(model)
    optimizer = adamw(param_groups(model, lr, head_lr_multiplier, layer_decay))
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer, seed=seed,
                  progress=progress, **fit_kwargs)
    return {"history": history, **counts(model)}


TECHNIQUE = entry("discriminative", discriminative,
                  "layer-wise lr decay {layer_decay:g} per block, head at {head_lr_multiplier:g}x lr",
                  ["layer_decay", "head_lr_multiplier"])
