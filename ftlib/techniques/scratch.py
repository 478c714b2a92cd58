"""Training from scratch: the same architecture from random weights (what pretraining buys)."""
from __future__ import annotations

from ftlib.techniques._registry import counts, entry, scratch_kwargs

__all__ = ["from_scratch"]


def from_scratch(model, train_loader, val_loader=None, *, model_name: str, epochs=3, lr=1e-4, seed=0,
                 progress=False, **fit_kwargs) -> dict:
    """Train the same architecture from random weights, with the same settings as ``full``.

    ``model`` only supplies the number of classes; a new randomly initialised model of
    ``model_name`` is built and returned as ``"model"``.
    """
    from torch import nn

    from ftlib.heads import find_head
    from ftlib.models import load_model
    from ftlib.train import fit, set_seed

    _, head = find_head(model)
    num_classes = [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features
    set_seed(seed)
    scratch = load_model(model_name, num_classes, pretrained=False)
    history = fit(scratch, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=progress,
                  **fit_kwargs)
    return {"history": history, "model": scratch, **counts(scratch)}


TECHNIQUE = entry("scratch", from_scratch, "same architecture, random initial weights, trained like full",
                  kwargs_from=scratch_kwargs)
