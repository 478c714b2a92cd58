"""What the technique modules share: the registry entry and the parameter counts.

:func:`entry` builds a technique's :class:`Technique` from its function: the options it
exposes take their defaults from the function's signature (the one place a default is
written), and its description is formatted from them (``"rank {r}"``). The entry's
``run(model, train_loader, val_loader, cfg)`` turns a run's config (epochs, lr, seed,
precision and determinism as one ``runtime``, ``technique_options``) into the function's
keyword arguments.

Nothing here imports torch: ``ftlib --help`` reads the registry.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Technique", "entry", "counts", "training_kwargs", "scratch_kwargs", "feature_kwargs"]


@dataclass(frozen=True)
class Technique:
    """A registry entry: how ``ftlib finetune --technique NAME`` runs a technique."""

    name: str
    description: str
    run: Callable[..., dict]
    options: dict = field(default_factory=dict)  # option -> default; "lr_factor" scales cfg.lr
    text_only: bool = False


def counts(model) -> dict:
    """``{"trainable_parameters": ..., "total_parameters": ...}`` of ``model``, as every technique returns."""
    from ftlib.models import count_parameters

    trainable, total = count_parameters(model)
    return {"trainable_parameters": trainable, "total_parameters": total}


def _options(technique: Technique, cfg) -> dict:
    given = dict(getattr(cfg, "technique_options", None) or {})
    unknown = sorted(set(given) - set(technique.options))
    if unknown:
        accepted = ", ".join(sorted(technique.options)) or "none"
        raise ValueError(f"Technique {technique.name!r} has no option {unknown[0]!r}; it accepts: {accepted}.")
    return {**technique.options, **given}


def training_kwargs(cfg, opts: dict) -> dict:
    """The run's budget for techniques that train with ``fit``; ``lr_factor`` scales ``cfg.lr``.

    The config's precision and determinism become the ``runtime`` that ``fit`` takes.
    """
    from ftlib.devices import Runtime  # here, not at the top: reading the registry imports no torch

    runtime = Runtime(precision=getattr(cfg, "precision", None) or "fp32",
                      deterministic=getattr(cfg, "deterministic", True))
    return {"epochs": cfg.epochs, "lr": cfg.lr * opts.pop("lr_factor", 1.0), "seed": cfg.seed,
            "progress": cfg.progress, "runtime": runtime}


def scratch_kwargs(cfg, opts: dict) -> dict:
    """:func:`training_kwargs` plus the model to rebuild from random weights."""
    return {**training_kwargs(cfg, opts), "model_name": cfg.model}


def feature_kwargs(cfg, opts: dict) -> dict:
    """No epochs or lr; the cache key names everything the features depend on."""
    kwargs = {"seed": cfg.seed, "progress": cfg.progress}
    cache_dir = opts.pop("cache_dir", None)
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
        kwargs["cache_key"] = {k: getattr(cfg, k, None) for k in (
            "model", "dataset", "seed", "train_size", "val_size", "test_size", "max_length", "image_size")}
    return kwargs


def defaults(function: Callable, names) -> dict:
    """``{name: default}`` of ``function``'s keyword arguments ``names``, read from its signature."""
    parameters = inspect.signature(function).parameters
    missing = [n for n in names if n not in parameters or parameters[n].default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"{function.__name__} has no keyword argument with a default named {missing[0]!r}.")
    return {n: parameters[n].default for n in names}


def entry(name: str, function: Callable, description: str, options=(), *, lr_factor: float | None = None,
          kwargs_from=training_kwargs, text_only: bool = False) -> Technique:
    """A registry entry whose ``run(model, train_loader, val_loader, cfg)`` calls ``function``.

    ``options`` names the keyword arguments of ``function`` a run may set
    (``technique_options``, ``--alpha``...); their defaults are the function's own.
    ``lr_factor``, an option of the entry rather than of the function, scales the run's
    ``lr``. ``description`` is formatted with the defaults: ``"rank {r}"``.
    """
    found = {**defaults(function, options), **({} if lr_factor is None else {"lr_factor": lr_factor})}
    technique: Technique

    def run(model, train_loader, val_loader, cfg) -> dict:
        opts = _options(technique, cfg)
        kwargs = kwargs_from(cfg, opts)  # consumes the options it handles
        return function(model, train_loader, val_loader, **kwargs, **opts)

    technique = Technique(name, description.format(**found), run, found, text_only)
    return technique
