"""Fine-tuning techniques as interchangeable recipes for ``ftlib finetune --technique``.

Each :class:`Technique` takes a model with its new head, the train and validation
loaders and the run's settings, trains, and returns ``{"history": History, ...}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["Technique", "TECHNIQUES"]


@dataclass(frozen=True)
class Technique:
    name: str
    description: str
    run: Callable[..., dict]


def _full(model, train_loader, val_loader, cfg) -> dict:
    from ftlib.models import count_parameters
    from ftlib.train import fit

    history = fit(model, train_loader, val_loader, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed,
                  progress=cfg.progress)
    return {"history": history, "trainable_parameters": count_parameters(model)[0]}


TECHNIQUES: dict[str, Technique] = {
    t.name: t
    for t in [
        Technique("full", "every weight trains, one learning rate", _full),
    ]
}
