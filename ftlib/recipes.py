"""The fine-tuning techniques themselves, one function each (notebook 08 of the course).

Every technique is a small function ``technique(model, train_loader, val_loader, *,
options) -> dict`` that trains ``model`` (a pretrained model with its new head) and
returns ``{"history": History, "trainable_parameters": int, ...}``; some also return
``"model"`` when they wrap or replace it (feature extraction, LoRA, from scratch).
Most are a configuration of :func:`ftlib.train.fit` (which blocks train, at which
rates, with which penalty); feature extraction and the first phase of LP-FT fit a
scikit-learn probe on frozen features instead (``ftlib.features``).

This module does not know the command line: the names ``ftlib finetune --technique``
accepts, their options and defaults are the registry in ``ftlib.techniques``, which
also re-exports every function here (import them from there).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ftlib import arguments
from ftlib.freezing import GradualUnfreezing, freeze_backbone, freeze_bottom, layer_blocks, unfreeze
from ftlib.heads import find_head
from ftlib.models import count_parameters
from ftlib.optim import adamw
from ftlib.train import History, fit, set_seed

__all__ = [
    "full_finetune",
    "partial_finetune",
    "from_scratch",
    "feature_extraction",
    "train_frozen",
    "linear_probe",
    "lp_ft",
    "discriminative",
    "gradual_unfreezing",
    "train_l2sp",
    "lora",
]


def _counts(model: nn.Module) -> dict:
    trainable, total = count_parameters(model)
    return {"trainable_parameters": trainable, "total_parameters": total}


def full_finetune(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, seed=0, progress=False,
                  **fit_kwargs) -> dict:
    """Plain fine-tuning: every parameter trains at ``lr`` (head included)."""
    unfreeze(model)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, **_counts(model)}


def partial_finetune(model, train_loader, val_loader=None, *, frozen_blocks=1, epochs=3, lr=1e-4, seed=0,
                     progress=False, **fit_kwargs) -> dict:
    """Fine-tuning with the lowest ``frozen_blocks`` blocks frozen; everything above trains at ``lr``.

    ``frozen_blocks=1`` freezes a transformer's embeddings only: about half of MiniLM's
    weights (its 30,522 x 384 token table), which fine-tuning on a few thousand texts
    barely moves, and whose gradient and AdamW update cost a fifth of each training
    step on a CPU. Backward stops at the lowest trainable block, so each frozen layer
    above the embeddings saves its backward pass too.
    """
    blocks = [name for name, _ in layer_blocks(model)]
    if not 0 <= frozen_blocks < len(blocks):
        raise ValueError(f"frozen_blocks must be between 0 and {len(blocks) - 1} (at least the top block trains); "
                         f"got {frozen_blocks!r}. This model's blocks, bottom first: {', '.join(blocks)}.")
    freeze_bottom(model, frozen_blocks)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, **_counts(model)}


def from_scratch(model, train_loader, val_loader=None, *, model_name: str, epochs=3, lr=1e-4, seed=0,
                 progress=False, **fit_kwargs) -> dict:
    """Train the same architecture from random weights, with the same settings as ``full``.

    ``model`` only supplies the number of classes; a new randomly initialised model of
    ``model_name`` is built and returned as ``"model"``.
    """
    from ftlib.models import load_model

    _, head = find_head(model)
    num_classes = [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features
    set_seed(seed)
    scratch = load_model(model_name, num_classes, pretrained=False)
    history = fit(scratch, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=progress,
                  **fit_kwargs)
    return {"history": history, "model": scratch, **_counts(scratch)}


def feature_extraction(model, train_loader, val_loader=None, *, Cs: Sequence[float] | None = None,
                       layers: int | None = None, classifier=None, cache_dir=None, cache_key: dict | None = None,
                       seed=0, progress=False) -> dict:
    """Frozen features + a scikit-learn classifier (LogisticRegression, C chosen on validation).

    Text models use the mean-pooled states of their last ``layers`` layers (default 4,
    concatenated; see ``ftlib.features``), image models the pooled map the head sees.
    ``Cs`` defaults to ``ftlib.features.DEFAULT_CS``: 1,536 standardized features from
    2,000 texts need strong regularization (the best C here is ~0.001).

    Returns a :class:`ftlib.features.ProbeModel` as ``"model"`` so the test set is
    evaluated like any torch model. With ``cache_dir`` and ``cache_key`` (a dict naming
    model, data set, seed...), features are cached per split.
    """
    from sklearn.metrics import log_loss

    from ftlib.features import DEFAULT_CS, ProbeModel, cached_features, fit_classifier

    start = time.perf_counter()
    if layers is None:
        config = getattr(model, "config", None)  # a transformer: its last four layers
        layers = min(4, getattr(config, "num_hidden_layers", 1)) if hasattr(model, "base_model_prefix") else 1
    freeze_backbone(model)
    _, head = find_head(model)
    num_classes = [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features
    key = lambda split: None if cache_key is None else {**cache_key, "split": split}  # noqa: E731
    cache = cache_dir if cache_key is not None else None
    X, y = cached_features(model, train_loader, cache_dir=cache, key=key("train"), layers=layers, progress=progress)
    Xv = yv = None
    if val_loader is not None:
        Xv, yv = cached_features(model, val_loader, cache_dir=cache, key=key("val"), layers=layers, progress=progress)
    clf = fit_classifier(X, y, Xv, yv, Cs=Cs or DEFAULT_CS, classifier=classifier, seed=seed)
    labels = list(range(num_classes))
    record = {"epoch": 0, "train_loss": float(log_loss(y, clf.predict_proba(X), labels=labels)),
              "train_accuracy": float((clf.predict(X) == y).mean()), "val_loss": None, "val_accuracy": None,
              "lr": None}
    if Xv is not None:
        record["val_loss"] = float(log_loss(yv, clf.predict_proba(Xv), labels=labels))
        record["val_accuracy"] = float((clf.predict(Xv) == yv).mean())
    record["seconds"] = time.perf_counter() - start
    history = History()
    history.append(record)
    history.best_epoch = 0
    estimator = clf[-1] if hasattr(clf, "steps") else clf
    n_params = int(np.size(getattr(estimator, "coef_", 0)) + np.size(getattr(estimator, "intercept_", 0)))
    return {"history": history, "model": ProbeModel(model, clf, num_classes, layers), "classifier": clf, "layers": layers,
            "trainable_parameters": n_params, "total_parameters": count_parameters(model)[1] + n_params,
            "val_scores": getattr(clf, "val_scores_", {})}


def train_frozen(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, head_lr_multiplier=10.0, seed=0,
                 progress=False, **fit_kwargs) -> dict:
    """Freeze the backbone (BatchNorm statistics included) and train the head with ``fit``.

    The head trains at ``lr * head_lr_multiplier``: a single linear layer on fixed
    features tolerates, and needs, a much larger rate than the backbone would.
    """
    freeze_backbone(model)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, head_lr_multiplier=head_lr_multiplier,
                  seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, **_counts(model)}


def linear_probe(model, train_loader, val_loader=None, *, Cs: Sequence[float] = (0.01, 0.1, 1.0), seed=0,
                 progress=False) -> dict:
    """Phase 1 of LP-FT: fit the head as a logistic regression on the frozen backbone.

    The head's last ``nn.Linear`` inputs are extracted in eval mode, a standardized
    LogisticRegression is fitted (C chosen on validation), and its weights, with the
    standardization folded in, are copied into that linear layer. The backbone (and
    its BatchNorm statistics) is not touched. Returns the probe's accuracies.
    """
    from ftlib.features import _last_linear, fit_classifier, head_inputs

    _, head = find_head(model)
    linear = _last_linear(head)
    X, y = head_inputs(model, train_loader, progress=progress)
    Xv = yv = None
    if val_loader is not None:
        Xv, yv = head_inputs(model, val_loader, progress=progress)
    clf = fit_classifier(X, y, Xv, yv, Cs=Cs, seed=seed)
    scaler, logreg = clf[0], clf[-1]
    num_classes = linear.out_features
    if list(logreg.classes_) != list(range(num_classes)):
        raise ValueError(f"The training data must contain every class 0..{num_classes - 1} for a linear probe; "
                         f"got classes {list(logreg.classes_)}.")
    coef = logreg.coef_ / scaler.scale_  # (K or 1, D): the standardization folded into the weights
    intercept = logreg.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:  # binary: sigmoid(z) equals softmax([-z/2, z/2])
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(intercept, dtype=linear.bias.dtype))
    result = {"train_accuracy": float((clf.predict(X) == y).mean()), "C": float(logreg.C)}
    if Xv is not None:
        result["val_accuracy"] = float((clf.predict(Xv) == yv).mean())
    return result


def lp_ft(model, train_loader, val_loader=None, *, epochs=3, lr=5e-5, Cs: Sequence[float] = (0.01, 0.1, 1.0),
          recalibrate: bool = True, seed=0, progress=False, **fit_kwargs) -> dict:
    """LP-FT (Kumar et al. 2022): linear probe the head, then fine-tune everything at ``lr``.

    Fine-tuning from a random head sends large, random gradients into the pretrained
    features during the first steps and distorts them; starting from the best linear
    head keeps those gradients small. Use a lower ``lr`` than for plain fine-tuning.

    On a BatchNorm backbone the probe must see the features that fine-tuning will see.
    Fine-tuning normalizes with the new data's batch statistics, so with ``recalibrate``
    (default) the BatchNorm running statistics are first recomputed on the training
    data (:func:`ftlib.freezing.recalibrate_batchnorm`), then the probe is fitted.
    Without it, measured on EfficientNet-Lite0 / Fashion-MNIST 500 (seed 0), the probe
    fitted on ImageNet-normalized features met different features in phase 2 and the
    run ended at 0.43 test accuracy against 0.74 for full fine-tuning. LayerNorm models
    (MiniLM) have no running statistics: nothing to recalibrate.
    """
    from ftlib.freezing import recalibrate_batchnorm

    start = time.perf_counter()
    freeze_backbone(model)
    recalibrated = recalibrate_batchnorm(model, train_loader) if recalibrate else 0
    probe = linear_probe(model, train_loader, val_loader, Cs=Cs, seed=seed, progress=progress)
    probe["seconds"] = time.perf_counter() - start
    probe["recalibrated_batchnorm_layers"] = recalibrated
    unfreeze(model)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, "probe": probe, **_counts(model)}


def discriminative(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, layer_decay=0.95,
                   head_lr_multiplier=10.0, seed=0, progress=False, **fit_kwargs) -> dict:
    """Discriminative fine-tuning: the top block at ``lr``, each block below ``layer_decay`` times slower.

    The head learns at ``lr * head_lr_multiplier``. 0.95 per layer is Sun et al.'s value
    for BERT; ULMFiT divides by 2.6 per block (``layer_decay=1/2.6``).
    """
    unfreeze(model)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, layer_decay=layer_decay,
                  head_lr_multiplier=head_lr_multiplier, seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, **_counts(model)}


def gradual_unfreezing(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, head_lr_multiplier=10.0,
                       blocks_per_epoch: int | None = None, seed=0, progress=False, **fit_kwargs) -> dict:
    """ULMFiT's gradual unfreezing: epoch 0 trains the head, then more blocks from the top.

    ``blocks_per_epoch`` defaults to as many as it takes to have every block unfrozen in
    the last epoch (a 3-epoch run of an 8-block MiniLM: head, then top 4, then all).
    """
    if blocks_per_epoch is None:
        blocks_per_epoch = max(1, math.ceil(len(layer_blocks(model)) / max(1, epochs - 1)))
    hook = GradualUnfreezing(model, blocks_per_epoch=blocks_per_epoch)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, head_lr_multiplier=head_lr_multiplier,
                  on_epoch_start=hook, seed=seed, progress=progress, **fit_kwargs)
    return {"history": history, "blocks_per_epoch": blocks_per_epoch, **_counts(model)}


def train_l2sp(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, alpha=0.01, seed=0, progress=False,
               **fit_kwargs) -> dict:
    """Fine-tune with the L2-SP penalty ``alpha/2 ||w - w0||^2`` on the backbone.

    Weight decay is turned off (``weight_decay=0``): it would pull the same weights
    towards zero, against the penalty. Returns the backbone's relative drift too.
    """
    from ftlib.regularization import backbone_state, l2sp_penalty, weight_distance

    arguments.number(alpha, "alpha", inclusive=True)
    unfreeze(model)
    w0 = backbone_state(model)
    fit_kwargs.setdefault("weight_decay", 0.0)
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, seed=seed, progress=progress,
                  penalty=lambda m: l2sp_penalty(m, w0, alpha), **fit_kwargs)
    drift = weight_distance(model, w0)
    return {"history": history, "weight_drift": drift["relative"],
            "final_penalty": 0.5 * alpha * drift["squared"], **_counts(model)}


def lora(model, train_loader, val_loader=None, *, epochs=3, lr=1e-3, r=8, lora_alpha=16, lora_dropout=0.1,
         target_modules: Sequence[str] = ("query", "value"), seed=0, progress=False, **fit_kwargs) -> dict:
    """LoRA (Hu et al. 2021) with peft: low-rank adapters on the attention query and value.

    The pretrained weights stay frozen; each targeted ``W`` becomes ``W + B A * alpha/r``
    with ``A`` (r x d) and ``B`` (d x r, zero at start) trainable. The new head trains
    too. Adapters start at zero and are few, so they want a larger ``lr`` than full
    fine-tuning. Returns the peft model as ``"model"`` and the trainable share.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if getattr(model, "base_model_prefix", None) is None:
        raise ValueError(f"The lora technique needs a Hugging Face transformer (its attention has "
                         f"{list(target_modules)} projections); got {type(model).__name__}. Use "
                         "another technique for image models.")
    arguments.integer(r, "r", meaning="the LoRA rank")
    total_before = count_parameters(model)[1]
    head_name, _ = find_head(model)
    set_seed(seed)  # A is initialised randomly
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=list(target_modules), modules_to_save=[head_name])
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5; harmless
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    weight_decay = fit_kwargs.pop("weight_decay", 0.01)
    optimizer = adamw([
        {"params": [p for p in trainable if p.ndim >= 2], "lr": lr, "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "lr": lr, "weight_decay": 0.0},
    ])
    history = fit(peft_model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer, seed=seed,
                  progress=progress, **fit_kwargs)
    n_trainable = sum(p.numel() for p in trainable)
    return {"history": history, "model": peft_model, "trainable_parameters": n_trainable,
            "total_parameters": total_before, "trainable_share": n_trainable / total_before}
