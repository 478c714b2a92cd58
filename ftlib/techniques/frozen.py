"""A frozen backbone: only the new head trains, with ``fit``."""
from __future__ import annotations

from ftlib.techniques._registry import counts, entry

__all__ = ["train_frozen"]


def train_frozen(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, head_lr_multiplier=10.0, seed=0,
                 progress=False, **fit_kwargs) -> dict:
    """Freeze the backbone (BatchNorm statistics included) and train the head with ``fit``.

    The head trains at ``lr * head_lr_multiplier``: a single linear layer on fixed
    features tolerates, and needs, a much larger rate than the backbone would.
    """
    from ftlib.freezing import freeze_backbone
    from ftlib.optim import adamw, param_groups
    from ftlib.train import fit

    freeze_backbone(model)
    optimizer = adamw(param_groups(model, lr, head_lr_multiplier))  # the head's parameters: all that trains
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer, seed=seed,
                  progress=progress, **fit_kwargs)
    return {"history": history, **counts(model)}


TECHNIQUE = entry("frozen", train_frozen, "frozen backbone, head trained with fit at {head_lr_multiplier:g}x lr",
                  ["head_lr_multiplier"])
