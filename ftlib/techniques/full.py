"""Full fine-tuning: every weight trains at one rate (the baseline)."""
from __future__ import annotations

from ftlib.techniques._registry import counts, entry

__all__ = ["full_finetune"]


def full_finetune(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, seed=0, progress=False,
                  **fit_kwargs) -> dict:
    """Plain fine-tuning: every parameter trains at ``lr`` (head included)."""
    from ftlib.freezing import unfreeze
    from ftlib.train import fit

    unfreeze(model)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, **counts(model)}


TECHNIQUE = entry("full", full_finetune, "every weight trains, one learning rate")
