"""Fine-tuning techniques as interchangeable recipes for ``ftlib finetune --technique``.

The one import path for the techniques (notebook 08, ``ftlib finetune``, ``ftlib compare``).
Each technique is a function ``technique(model, train_loader, val_loader, *, options) -> dict``
that trains ``model`` (a pretrained model with its new head) and returns
``{"history": History, "trainable_parameters": int, ...}``, plus ``"model"`` when it wraps
or replaces it. Each lives in its own module with its registry entry; :data:`TECHNIQUES`
maps the command-line names to those entries:

=====================  ======================  ==================================================
name                   module                  what
=====================  ======================  ==================================================
full                   ``full``                every weight trains at one rate (the baseline)
partial                ``partial``             the bottom blocks frozen, the rest as full
scratch                ``scratch``             the same architecture from random weights
feature-extraction     ``features``            frozen features + scikit-learn LogisticRegression
frozen                 ``frozen``              frozen backbone, the head trains with ``fit``
lp-ft                  ``lpft``                linear probe first, then fine-tune everything
discriminative         ``layerwise``           layer-wise learning rates, head fastest
gradual                ``gradual``             gradual unfreezing from the top (ULMFiT)
l2sp                   ``l2sp``                penalty towards the pretrained weights
lora                   ``adapters``            low-rank adapters on attention query/value (peft)
=====================  ======================  ==================================================

``label_smoothing`` holds :func:`label_smoothing_loss`, a regularizer of the loss
(``fit(..., loss_fn=nn.CrossEntropyLoss(label_smoothing=))``), not a ``--technique``.
``features`` also holds the frozen-feature tools
(:func:`~ftlib.techniques.features.extract_features`, the probe classifier, the feature
cache) and ``l2sp`` the L2-SP penalty, its ``fit`` callback and the weight drift.

An entry lists its options (``--alpha``, ``--layer-decay``...) with their defaults, which
are the function's own keyword defaults (read from its signature; its ``description``
is formatted from them); ``technique_options`` on the run's config overrides them. Its
``run(model, train_loader, val_loader, cfg)`` turns the run's config (epochs, lr, seed;
precision and determinism as one ``runtime``) and those options into the function's
keyword arguments. The modules import torch when a technique runs, not when the
registry is read (``ftlib --help``).
"""
from __future__ import annotations

from ftlib.techniques import adapters, features, frozen, full, gradual, l2sp, layerwise, lpft, partial, scratch
from ftlib.techniques._registry import Technique
from ftlib.techniques.adapters import lora
from ftlib.techniques.features import feature_extraction
from ftlib.techniques.frozen import train_frozen
from ftlib.techniques.full import full_finetune
from ftlib.techniques.gradual import gradual_unfreezing
from ftlib.techniques.l2sp import train_l2sp
from ftlib.techniques.layerwise import discriminative
from ftlib.techniques.lpft import linear_probe, lp_ft
from ftlib.techniques.partial import partial_finetune
from ftlib.techniques.scratch import from_scratch

__all__ = ["Technique", "TECHNIQUES", "get_technique", "full_finetune", "partial_finetune", "from_scratch",
           "feature_extraction", "train_frozen", "linear_probe", "lp_ft", "discriminative", "gradual_unfreezing",
           "train_l2sp", "lora"]

# In the order `ftlib --help` lists them: each module's entry.
TECHNIQUES: dict[str, Technique] = {
    module.TECHNIQUE.name: module.TECHNIQUE
    for module in (full, partial, scratch, features, frozen, lpft, layerwise, gradual, l2sp, adapters)
}


def get_technique(name: str) -> Technique:
    """The registry entry for ``name``; an unknown name gets the list of available ones."""
    if name not in TECHNIQUES:
        raise ValueError(f"Unknown technique {name!r}. Available techniques: {', '.join(TECHNIQUES)}.")
    return TECHNIQUES[name]
