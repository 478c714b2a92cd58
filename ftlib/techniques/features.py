"""Feature extraction: a frozen pretrained backbone as a fixed feature function.

The cheapest way to use a pretrained model: run it once over the data, keep one vector
per example, and train a classical classifier (scikit-learn's LogisticRegression) on
those vectors. No gradient ever reaches the backbone, so it cannot forget anything, and
a second classifier on the same features costs seconds, not minutes.

* text: the token states of the last encoder layer, averaged over the real tokens
  (the attention mask leaves padding out): "mean pooling", what sentence encoders such
  as all-MiniLM-L6-v2 were trained to produce. With ``layers=k``, the mean-pooled states
  of the last k layers side by side (BERT's feature-based experiments found the last
  four layers concatenated best; on Rotten Tomatoes they add about 2 points);
* images: the globally pooled feature map, i.e. exactly what the classification head
  receives (captured with a forward pre-hook on the head).

Features are computed in eval mode (Dropout off, BatchNorm on its pretrained
statistics) under ``torch.no_grad()`` and returned as NumPy arrays ``(X, y)``.
:func:`cached_features` stores them in an ``.npz`` file keyed by model, data and seed.

:func:`feature_extraction` is the ``feature-extraction`` technique; the linear probe of
LP-FT (``ftlib.techniques.lpft``) uses :func:`head_inputs` and :func:`fit_classifier`.
torch is imported when a function runs, not with the module (``ftlib --help`` reads the
registry); :class:`ProbeModel` is defined on first use for the same reason.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from ftlib import arguments
from ftlib.techniques._registry import entry, feature_kwargs

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

__all__ = [
    "feature_extraction",
    "mean_pool",
    "text_encoder",
    "extract_features",
    "last_linear",
    "head_inputs",
    "feature_cache_path",
    "cached_features",
    "fit_classifier",
    "DEFAULT_CS",
    "ProbeModel",
]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token states over the positions where ``attention_mask`` is 1.

    ``hidden`` is (B, T, H), ``attention_mask`` (B, T); returns (B, H). Padding does not
    count, so a short text padded to the batch's longest gets the same vector as alone.
    """
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden (B, T, H) and attention_mask (B, T); got {tuple(hidden.shape)} "
                         f"and {tuple(attention_mask.shape)}.")
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def text_encoder(model: nn.Module) -> nn.Module:
    """The transformer body of a Hugging Face classifier (``model.bert`` for BERT).

    A model that is already a body (``BertModel``) is returned as is.
    """
    from torch import nn

    prefix = getattr(model, "base_model_prefix", None)
    if prefix is None:
        raise TypeError(f"{type(model).__name__} is not a Hugging Face transformer; text features need one.")
    body = getattr(model, prefix, None)
    return body if isinstance(body, nn.Module) else model


def _is_text_batch(batch: dict) -> bool:
    return "input_ids" in batch


DEFAULT_CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # LogisticRegression's C, chosen on validation


def _check_layers(layers: int) -> None:
    arguments.integer(layers, "layers", meaning="how many of the last layers to use")


def _batch_features(backbone: nn.Module, inputs: dict, layers: int = 1) -> torch.Tensor:
    """Features (B, D) of one batch without labels; the caller handles eval and no_grad."""
    import torch

    from ftlib.heads import find_head

    if _is_text_batch(inputs):
        encoder = text_encoder(backbone)
        if layers == 1:
            hidden = encoder(**inputs).last_hidden_state  # (B, T, H)
            return mean_pool(hidden, inputs["attention_mask"])
        states = encoder(**inputs, output_hidden_states=True).hidden_states  # embeddings + one per layer
        if layers > len(states) - 1:
            raise ValueError(f"layers={layers} but the encoder has only {len(states) - 1} layers.")
        return torch.cat([mean_pool(h, inputs["attention_mask"]) for h in states[-layers:]], dim=-1)
    if layers != 1:
        raise ValueError("layers applies to text encoders; image features are the pooled map the head sees.")
    x = inputs["pixel_values"]  # (B, 3, H, W)
    try:
        _, head = find_head(backbone)
    except ValueError:
        head = None
    if head is None:  # a headless backbone: pool whatever it returns
        out = backbone(x)
        return out.mean(dim=(2, 3)) if out.ndim == 4 else out.flatten(1)
    captured = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        backbone(x)
    finally:
        hook.remove()
    return captured[0].flatten(1)  # (B, D): what the head sees


def _run(model: nn.Module, loader: Iterable[dict], fn, device, progress: bool, desc: str):
    import torch

    from ftlib.devices import to_device as _to
    from ftlib.progress import progress_bar

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        with torch.no_grad():
            for batch in progress_bar(loader, progress, desc=desc):
                if not isinstance(batch, dict) or "labels" not in batch:
                    raise TypeError("batches must be dicts with a 'labels' entry (see ftlib.data.make_loader); "
                                    f"got {type(batch).__name__}.")
                batch = _to(batch, device)
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                features.append(fn(model, inputs).float().cpu())
                labels.append(batch["labels"].cpu())
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("The loader yielded no batches.")
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def extract_features(backbone: nn.Module, loader: Iterable[dict], *, layers: int = 1, device=None,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One feature vector per example: ``(X, y)`` with X (N, D) float32 and y (N,) int64.

    Text batches (``input_ids``...) give mean-pooled last-layer token states (with
    ``layers=k``: those of the last k layers, concatenated, D = k x hidden size); image
    batches (``pixel_values``) give the pooled features the head receives. The
    backbone runs in eval mode under ``torch.no_grad()``; its mode is restored.

    Examples
    --------
    >>> X, y = extract_features(model, train_loader)   # doctest: +SKIP
    >>> X.shape                                        # doctest: +SKIP
    (2000, 384)
    """
    from torch import nn

    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a torch.nn.Module; got {type(backbone).__name__}.")
    _check_layers(layers)
    return _run(backbone, loader, lambda m, inputs: _batch_features(m, inputs, layers), device, progress, "features")


def last_linear(head: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a classification head: the layer a linear probe is copied into."""
    from torch import nn

    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"The head {head!r} contains no nn.Linear layer.")
    return linears[-1]


def head_inputs(model: nn.Module, loader: Iterable[dict], *, device=None,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` where X is what the head's last ``nn.Linear`` receives (eval mode).

    For a BERT classifier that is the pooler output, for a CNN the pooled features:
    the inputs of a linear probe that can be copied into the head (LP-FT).
    """
    from ftlib.heads import find_head

    _, head = find_head(model)
    linear = last_linear(head)

    def fn(m: nn.Module, inputs: dict) -> torch.Tensor:
        from ftlib.devices import logits_and_labels

        captured = []
        hook = linear.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            logits_and_labels(m, {**inputs, "labels": None})
        finally:
            hook.remove()
        return captured[0]

    return _run(model, loader, fn, device, progress, "head inputs")


def feature_cache_path(cache_dir: str | Path, **key) -> Path:
    """The ``.npz`` file for a key such as ``model=..., dataset=..., split=..., seed=...``.

    The name is readable (the key's values) plus a hash of the whole key, so two keys
    never share a file.
    """
    if not key:
        raise ValueError("feature_cache_path needs a key, e.g. model=, dataset=, split=, seed=.")
    text = json.dumps(key, sort_keys=True, default=str)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    readable = "-".join(str(v).replace("/", "_") for v in key.values())[:80]
    return Path(cache_dir) / f"{readable}-{digest}.npz"


def cached_features(backbone: nn.Module, loader: Iterable[dict], *, cache_dir: str | Path | None,
                    key: dict, layers: int = 1, device=None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`extract_features`, read from / written to ``cache_dir`` under ``key``.

    The key must name everything the features depend on (model and its weights, data
    set, split, size, seed, preprocessing); a stale key gives stale features. With
    ``cache_dir=None`` nothing is cached.
    """
    import numpy as np

    if cache_dir is None:
        return extract_features(backbone, loader, layers=layers, device=device, progress=progress)
    if layers != 1:
        key = {**key, "layers": layers}
    path = feature_cache_path(cache_dir, **key)
    if path.exists():
        with np.load(path) as stored:
            return stored["X"], stored["y"]
    X, y = extract_features(backbone, loader, layers=layers, device=device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")  # written whole, then renamed: no half files
    np.savez(tmp, X=X, y=y, key=json.dumps(key, sort_keys=True, default=str))
    tmp.replace(path)
    return X, y


def fit_classifier(X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
                   *, Cs: Sequence[float] = DEFAULT_CS, classifier=None, seed: int = 0):
    """A scikit-learn classifier on features; by default standardized LogisticRegression.

    With validation features, the inverse regularization strength ``C`` is chosen
    from ``Cs`` by validation accuracy (never by test accuracy), then the chosen model
    is returned; its ``val_scores_`` maps each C to its validation accuracy. A given
    ``classifier`` (any estimator) is fitted as is.
    """
    import numpy as np
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"expected X (N, D) and y (N,); got shapes {X.shape} and {y.shape}.")
    if classifier is not None:
        return clone(classifier).fit(X, y)
    if not Cs or any(not c > 0 for c in Cs):
        raise ValueError(f"Cs must be a non-empty list of numbers > 0; got {Cs!r}.")
    make = lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))  # noqa: E731
    if X_val is None or len(Cs) == 1:
        model = make(Cs[-1] if X_val is None else Cs[0]).fit(X, y)
        model.val_scores_ = {}
        return model
    scores, models = {}, {}
    for c in Cs:
        models[c] = make(c).fit(X, y)
        scores[c] = float((models[c].predict(X_val) == np.asarray(y_val)).mean())
    best = max(Cs, key=lambda c: (scores[c], -c))  # ties: the stronger regularization
    model = models[best]
    model.val_scores_ = scores
    return model


def _probe_model_class() -> type:
    """:class:`ProbeModel`, defined at the first call (it subclasses torch's ``nn.Module``)."""
    if "ProbeModel" in globals():
        return globals()["ProbeModel"]
    import numpy as np
    import torch
    from torch import nn

    class ProbeModel(nn.Module):
        """A frozen backbone plus a fitted scikit-learn classifier, usable as a torch model.

        ``forward`` returns log-probabilities (B, K) as logits, so ``ftlib.train.evaluate``
        and :class:`ftlib.evaluate.HeldOutTest` work on feature extraction unchanged.
        Inference only: nothing in it trains.
        """

        def __init__(self, backbone: nn.Module, classifier, num_classes: int, layers: int = 1) -> None:
            super().__init__()
            _check_layers(layers)
            self.backbone = backbone.eval()
            self.classifier = classifier
            self.num_classes = num_classes
            self.layers = layers  # as given to extract_features when the classifier was fitted
            for p in self.backbone.parameters():
                p.requires_grad_(False)

        def train(self, mode: bool = True) -> "ProbeModel":
            super().train(mode)
            self.backbone.eval()  # always: the features were computed in eval mode
            return self

        @torch.no_grad()
        def forward(self, pixel_values: torch.Tensor | None = None, **text_inputs) -> torch.Tensor:
            inputs = {"pixel_values": pixel_values} if pixel_values is not None else text_inputs
            X = _batch_features(self.backbone, inputs, self.layers).float().cpu().numpy()
            proba = self.classifier.predict_proba(X)  # (B, classes seen in training)
            out = np.full((len(X), self.num_classes), -1e9, dtype=np.float32)
            out[:, np.asarray(self.classifier.classes_, dtype=np.int64)] = np.log(np.clip(proba, 1e-12, None))
            return torch.from_numpy(out).to(next(self.backbone.parameters()).device)  # beside the labels

    ProbeModel.__qualname__ = "ProbeModel"  # a module-level name, as pickle and repr expect
    globals()["ProbeModel"] = ProbeModel
    return ProbeModel


def __getattr__(name: str):
    if name == "ProbeModel":  # `from ftlib.techniques.features import ProbeModel` defines it
        return _probe_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def feature_extraction(model, train_loader, val_loader=None, *, Cs: Sequence[float] | None = None,
                       layers: int | None = None, classifier=None, cache_dir=None, cache_key: dict | None = None,
                       seed=0, progress=False) -> dict:
    """Frozen features + a scikit-learn classifier (LogisticRegression, C chosen on validation).

    Text models use the mean-pooled states of their last ``layers`` layers (default 4,
    concatenated; see :func:`extract_features`), image models the pooled map the head sees.
    ``Cs`` defaults to :data:`DEFAULT_CS`: 1,536 standardized features from
    2,000 texts need strong regularization (the best C here is ~0.001).

    Returns a :class:`ProbeModel` as ``"model"`` so the test set is
    evaluated like any torch model. With ``cache_dir`` and ``cache_key`` (a dict naming
    model, data set, seed...), features are cached per split.
    """
    import numpy as np
    from sklearn.metrics import log_loss
    from torch import nn

    from ftlib.freezing import freeze_backbone
    from ftlib.heads import find_head
    from ftlib.models import count_parameters
    from ftlib.train import History

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
    probe = _probe_model_class()(model, clf, num_classes, layers)
    return {"history": history, "model": probe, "classifier": clf, "layers": layers,
            "trainable_parameters": n_params, "total_parameters": count_parameters(model)[1] + n_params,
            "val_scores": getattr(clf, "val_scores_", {})}


TECHNIQUE = entry("feature-extraction", feature_extraction,
                  "frozen backbone features + LogisticRegression (C chosen on validation)",
                  ["cache_dir"], kwargs_from=feature_kwargs)
