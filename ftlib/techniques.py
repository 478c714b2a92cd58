"""Fine-tuning techniques as interchangeable recipes for ``ftlib finetune --technique``.

The one import path for the techniques (notebook 08, ``ftlib finetune``, ``ftlib compare``).
The functions themselves, ``technique(model, train_loader, val_loader, *, options) -> dict``,
are in ``ftlib.recipes`` and re-exported here; this module is the registry that names
them for the command line. :data:`TECHNIQUES` maps the command-line names to them:

=====================  ==================================================================
full                   every weight trains at one rate (the baseline)
partial                the bottom blocks frozen (default: the embeddings), the rest as full
scratch                the same architecture from random weights (what pretraining buys)
feature-extraction     frozen features + scikit-learn LogisticRegression
frozen                 frozen backbone, the head trains with ``fit``
lp-ft                  linear probe first, then fine-tune everything (Kumar et al. 2022)
discriminative         layer-wise learning rates, head fastest (ULMFiT; Sun et al. 2019)
gradual                gradual unfreezing from the top (ULMFiT)
l2sp                   penalty towards the pretrained weights (Li et al. 2018)
lora                   low-rank adapters on attention query/value (Hu et al. 2021; peft)
=====================  ==================================================================

Each registry entry also lists its options (``--alpha``, ``--layer-decay``...) with
defaults; ``technique_options`` on the run's config overrides them. An entry's
``run(model, train_loader, val_loader, cfg)`` turns the run's config (epochs, lr, seed,
precision) and those options into the function's keyword arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ftlib import recipes
from ftlib.recipes import (discriminative, feature_extraction, from_scratch, full_finetune, gradual_unfreezing,
                           linear_probe, lora, lp_ft, partial_finetune, train_frozen, train_l2sp)

# The registry, and the techniques themselves re-exported from ftlib.recipes.
__all__ = ["Technique", "TECHNIQUES", "get_technique", *recipes.__all__]


@dataclass(frozen=True)
class Technique:
    """A registry entry: how ``ftlib finetune --technique NAME`` runs a technique."""

    name: str
    description: str
    run: Callable[..., dict]
    options: dict = field(default_factory=dict)  # option -> default; "lr_factor" scales cfg.lr
    text_only: bool = False


def _options(technique: "Technique", cfg) -> dict:
    given = dict(getattr(cfg, "technique_options", None) or {})
    unknown = sorted(set(given) - set(technique.options))
    if unknown:
        accepted = ", ".join(sorted(technique.options)) or "none"
        raise ValueError(f"Technique {technique.name!r} has no option {unknown[0]!r}; it accepts: {accepted}.")
    return {**technique.options, **given}


def _training_kwargs(cfg, opts: dict) -> dict:
    """The run's budget for techniques that train with ``fit``; ``lr_factor`` scales ``cfg.lr``."""
    return {"epochs": cfg.epochs, "lr": cfg.lr * opts.pop("lr_factor", 1.0), "seed": cfg.seed,
            "progress": cfg.progress, "precision": getattr(cfg, "precision", None) or "fp32",
            "deterministic": getattr(cfg, "deterministic", True)}


def _scratch_kwargs(cfg, opts: dict) -> dict:
    return {**_training_kwargs(cfg, opts), "model_name": cfg.model}


def _feature_kwargs(cfg, opts: dict) -> dict:
    """No epochs or lr; the cache key names everything the features depend on."""
    kwargs = {"seed": cfg.seed, "progress": cfg.progress}
    cache_dir = opts.pop("cache_dir", None)
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
        kwargs["cache_key"] = {k: getattr(cfg, k, None) for k in (
            "model", "dataset", "seed", "train_size", "val_size", "test_size", "max_length", "image_size")}
    return kwargs


def _adapter(name: str, function: Callable, description: str, options: dict | None = None, *,
             kwargs_from=_training_kwargs, text_only: bool = False) -> Technique:
    """A registry entry whose ``run(model, train_loader, val_loader, cfg)`` calls ``function``."""
    def run(model, train_loader, val_loader, cfg) -> dict:
        opts = _options(TECHNIQUES[name], cfg)
        kwargs = kwargs_from(cfg, opts)  # consumes the options it handles
        return function(model, train_loader, val_loader, **kwargs, **opts)

    return Technique(name, description, run, dict(options or {}), text_only)


TECHNIQUES: dict[str, Technique] = {
    t.name: t
    for t in [
        _adapter("full", full_finetune, "every weight trains, one learning rate"),
        _adapter("partial", partial_finetune, "the bottom blocks frozen (default 1: the embeddings), the rest as full",
                 {"frozen_blocks": 1}),
        _adapter("scratch", from_scratch, "same architecture, random initial weights, trained like full",
                 kwargs_from=_scratch_kwargs),
        _adapter("feature-extraction", feature_extraction,
                 "frozen backbone features + LogisticRegression (C chosen on validation)",
                 {"cache_dir": None}, kwargs_from=_feature_kwargs),
        _adapter("frozen", train_frozen, "frozen backbone, head trained with fit at 10x lr",
                 {"head_lr_multiplier": 10.0}),
        _adapter("lp-ft", lp_ft, "linear probe the head, then fine-tune all at half the lr",
                 {"lr_factor": 0.5}),
        _adapter("discriminative", discriminative, "layer-wise lr decay 0.95 per block, head at 10x lr",
                 {"layer_decay": 0.95, "head_lr_multiplier": 10.0}),
        _adapter("gradual", gradual_unfreezing, "gradual unfreezing from the top, head at 10x lr",
                 {"head_lr_multiplier": 10.0, "blocks_per_epoch": None}),
        _adapter("l2sp", train_l2sp, "penalty alpha/2 ||w - w0||^2 towards the pretrained backbone",
                 {"alpha": 0.01}),
        _adapter("lora", lora, "LoRA adapters (rank 8) on attention query/value + head, lr 10x",
                 {"r": 8, "lr_factor": 10.0}, text_only=True),
    ]
}


def get_technique(name: str) -> Technique:
    """The registry entry for ``name``; an unknown name gets the list of available ones."""
    if name not in TECHNIQUES:
        raise ValueError(f"Unknown technique {name!r}. Available techniques: {', '.join(TECHNIQUES)}.")
    return TECHNIQUES[name]
