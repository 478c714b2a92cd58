"""Step 6: training while monitoring.

``train_one_epoch`` and ``evaluate`` are the two halves of every training loop; ``fit``
runs them for several epochs and records a :class:`History` (train and validation loss
and accuracy, learning rate, seconds per epoch) with a progress bar and time estimate.
It supports early stopping on validation with best-weights restore, gradient clipping,
a warmup schedule, per-group learning rates, an extra penalty (L2-SP) and a per-epoch
hook (gradual unfreezing). A seed makes two runs give the same history.

Batches are dicts with a ``"labels"`` entry (see ``ftlib.data``). The test set is not
used here: ``ftlib.evaluate`` touches it once, at the end.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ftlib.freezing import set_frozen_batchnorm_eval

__all__ = [
    "set_seed",
    "default_device",
    "logits_and_labels",
    "train_one_epoch",
    "evaluate",
    "predict",
    "EarlyStopping",
    "History",
    "fit",
]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def logits_and_labels(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on a dict batch; works for Hugging Face and plain PyTorch models."""
    if not isinstance(batch, dict) or "labels" not in batch:
        raise TypeError("batches must be dicts with a 'labels' entry (see ftlib.data.make_loader); "
                        f"got {type(batch).__name__}.")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if set(inputs) == {"pixel_values"} and not hasattr(model, "config"):
        out = model(inputs["pixel_values"])
    else:
        out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out
    return logits, batch["labels"]


def progress_style() -> str:
    """``"bars"`` in Jupyter or when stderr is a terminal, else ``"lines"``.

    Progress bars redraw themselves with carriage returns, which a log file, CI or
    ``nohup`` keeps as hundreds of fragments; off a terminal each phase prints one line
    with its time instead. ``FTLIB_PROGRESS=bars`` or ``=lines`` overrides the guess.
    """
    forced = os.environ.get("FTLIB_PROGRESS", "").strip().lower()
    if forced in ("bars", "lines"):
        return forced
    if _in_jupyter():
        return "bars"
    stream = sys.stderr
    return "bars" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "lines"


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


class _Lines:
    """A stand-in for a tqdm bar off a terminal: one line per phase, when it ends."""

    def __init__(self, iterable, desc: str = "", unit: str = "step", **_):
        self.iterable, self.desc, self.unit = iterable, desc, unit

    def __iter__(self):
        start, n = time.perf_counter(), 0
        for n, item in enumerate(self.iterable, 1):
            yield item
        unit = self.unit if n == 1 else {"batch": "batches"}.get(self.unit, self.unit + "s")
        print(f"{self.desc}: {n} {unit} in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)

    def set_postfix(self, **_) -> None:
        """Live figures belong to a bar; the epoch's summary line carries them here."""

    @staticmethod
    def write(text: str) -> None:
        print(text, flush=True)  # where tqdm.write prints too


def _progress(iterable, enabled: bool, *, leave: bool = False, **kwargs):
    if not enabled:
        return iterable
    if progress_style() == "lines":
        return _Lines(iterable, **kwargs)
    import warnings

    from tqdm import TqdmExperimentalWarning

    # A widget in Jupyter, text in a terminal. Not tqdm.auto: in a terminal that is the
    # asyncio tqdm, which calls iter() on the loader once more when the bar is made, and
    # each DataLoader iterator draws a seed from the loader's generator; the shuffling
    # order, and so the results, would then depend on whether bars are shown.
    with warnings.catch_warnings():  # what tqdm.auto does too
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        from tqdm.autonotebook import tqdm

    return tqdm(iterable, leave=leave, dynamic_ncols=True, **kwargs)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable | None = None,
    scheduler=None,
    *,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    clip_grad_norm: float | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "train",
) -> dict:
    """One pass over ``loader``: forward, loss, backward, (clip), step, schedule.

    The model is put in train mode, with BatchNorm layers of frozen blocks kept in eval
    mode so their running statistics do not move. ``penalty(model)``, when given, is
    added to the loss (L2-SP, for example). Returns ``{"loss", "accuracy", "seconds",
    "steps"}`` with the loss averaged over examples.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.train()
    set_frozen_batchnorm_eval(model)
    start = time.perf_counter()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    bar = _progress(loader, progress, desc=desc, unit="batch")
    for batch in bar:
        batch = _to(batch, device)
        logits, labels = logits_and_labels(model, batch)
        loss = loss_fn(logits, labels)
        objective = loss + penalty(model) if penalty is not None else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = labels.shape[0]
        total_loss += loss.item() * n
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        seen += n
        steps += 1
        if progress and steps % 10 == 0:
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
    if seen == 0:
        raise ValueError("The training loader yielded no batches.")
    return {"loss": total_loss / seen, "accuracy": correct / seen,
            "seconds": time.perf_counter() - start, "steps": steps}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    loss_fn: Callable | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Loss and accuracy on ``loader`` in eval mode, without gradients.

    The model's previous train/eval mode is restored afterwards. Returns
    ``{"loss", "accuracy", "y_true", "y_pred"}`` (the last two as NumPy arrays).
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, y_true, y_pred = 0.0, [], []
    try:
        for batch in _progress(loader, progress, desc=desc, unit="batch"):
            batch = _to(batch, device)
            logits, labels = logits_and_labels(model, batch)
            total_loss += loss_fn(logits, labels).item() * labels.shape[0]
            y_true.append(labels.cpu())
            y_pred.append(logits.argmax(dim=-1).cpu())
    finally:
        model.train(was_training)
    if not y_true:
        raise ValueError("The evaluation loader yielded no batches.")
    y_true_np, y_pred_np = torch.cat(y_true).numpy(), torch.cat(y_pred).numpy()
    return {"loss": total_loss / len(y_true_np), "accuracy": float((y_true_np == y_pred_np).mean()),
            "y_true": y_true_np, "y_pred": y_pred_np}


def predict(model: nn.Module, loader: Iterable[dict], **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` for ``loader`` (see :func:`evaluate`)."""
    result = evaluate(model, loader, **kwargs)
    return result["y_true"], result["y_pred"]


class EarlyStopping:
    """Stop when the monitored value has not improved for ``patience`` epochs.

    An improvement must beat the best value so far by more than ``min_delta``.
    ``mode="min"`` for losses, ``"max"`` for accuracies. ``step(value)`` returns True
    when training should stop; ``best_`` and ``best_epoch_`` record the best so far.
    """

    def __init__(self, patience: int = 2, min_delta: float = 0.0, mode: str = "min") -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1; got {patience!r}.")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0; got {min_delta!r}.")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max'; got {mode!r}.")
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.best_: float | None = None
        self.best_epoch_: int | None = None
        self.bad_epochs_ = 0
        self.epoch_ = -1

    def improved(self, value: float) -> bool:
        if self.best_ is None:
            return True
        if self.mode == "min":
            return value < self.best_ - self.min_delta
        return value > self.best_ + self.min_delta

    def step(self, value: float) -> bool:
        self.epoch_ += 1
        if self.improved(value):
            self.best_, self.best_epoch_, self.bad_epochs_ = value, self.epoch_, 0
        else:
            self.bad_epochs_ += 1
        return self.bad_epochs_ >= self.patience


class History:
    """Per-epoch records of a :func:`fit` run, plus which epoch was best."""

    KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.best_epoch: int | None = None
        self.stopped_early = False

    def append(self, record: dict) -> None:
        self.epochs.append(record)

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, key):
        if isinstance(key, str):
            return [e.get(key) for e in self.epochs]
        return self.epochs[key]

    def to_list(self) -> list[dict]:
        return [dict(e) for e in self.epochs]

    def __repr__(self) -> str:
        lines = [f"History({len(self)} epochs, best={self.best_epoch})"]
        for e in self.epochs:
            val = f" val_loss {e['val_loss']:.4f} val_acc {e['val_accuracy']:.4f}" if e.get("val_loss") is not None else ""
            lines.append(f"  epoch {e['epoch']}: train_loss {e['train_loss']:.4f} train_acc {e['train_accuracy']:.4f}{val} ({e['seconds']:.1f}s)")
        return "\n".join(lines)


def fit(
    model: nn.Module,
    train_loader,
    val_loader=None,
    *,
    epochs: int = 3,
    lr: float = 5e-5,
    weight_decay: float = 0.01,
    head_lr_multiplier: float = 1.0,
    layer_decay: float = 1.0,
    optimizer: torch.optim.Optimizer | None = None,
    schedule: str = "linear",
    warmup: float = 0.1,
    loss_fn: Callable | None = None,
    label_smoothing: float = 0.0,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    clip_grad_norm: float | None = 1.0,
    patience: int | None = None,
    min_delta: float = 0.0,
    monitor: str = "val_accuracy",
    restore_best: bool = True,
    on_epoch_start: Callable[[nn.Module, int], None] | None = None,
    seed: int | None = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` for ``epochs`` epochs, validating after each one.

    By default: AdamW with decoupled weight decay (not on biases and norms) at ``lr``
    (head at ``lr * head_lr_multiplier``, layer-wise ``layer_decay`` below), a linear
    schedule after ``warmup`` (a fraction of all steps), gradient clipping at norm 1.
    With ``patience``, training stops once ``monitor`` ("val_accuracy" or "val_loss")
    has not improved for that many epochs; with ``restore_best`` the weights of the best
    validation epoch are put back at the end. The default monitors accuracy, the metric
    we report: while fine-tuning, validation loss often rises (the model grows more
    confident on the examples it gets wrong) while accuracy still improves, so choosing
    on loss would stop at epoch 1. Returns a :class:`History`.
    """
    from ftlib.optim import adamw, make_scheduler, param_groups

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}.")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a number > 0; got {lr!r}.")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup is a fraction of all steps in [0, 1); got {warmup!r}.")
    if monitor not in ("val_loss", "val_accuracy"):
        raise ValueError(f"monitor must be 'val_loss' or 'val_accuracy'; got {monitor!r}.")
    if (patience is not None or restore_best) and val_loader is None:
        patience, restore_best = None, False  # nothing to monitor without validation data
    device = torch.device(device) if device is not None else default_device()
    if seed is not None:
        set_seed(seed)
        generator = getattr(train_loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)  # the same shuffling order on every run
    model.to(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    if optimizer is None:
        flags = {p: p.requires_grad for p in model.parameters()}
        if on_epoch_start is not None:
            # Blocks unfrozen later must already be in the optimizer; frozen ones get no
            # gradient, and AdamW skips parameters without one.
            for p in flags:
                p.requires_grad_(True)
        groups = param_groups(model, lr, head_lr_multiplier, layer_decay, weight_decay)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        optimizer = adamw(groups)
    total_steps = epochs * len(train_loader)
    scheduler = make_scheduler(optimizer, schedule, total_steps=total_steps,
                               warmup_steps=int(warmup * total_steps))

    stopper = EarlyStopping(patience, min_delta, "min" if monitor == "val_loss" else "max") if patience else None
    tracker = EarlyStopping(1, 0.0, "min" if monitor == "val_loss" else "max")  # best epoch only
    best_state = None
    history = History()
    # The epochs bar stays when done (how long the run took); each epoch's bar goes.
    epoch_bar = _progress(range(epochs), progress, desc="epochs", unit="epoch", leave=True)
    for epoch in epoch_bar:
        start = time.perf_counter()
        if on_epoch_start is not None:
            on_epoch_start(model, epoch)
        train = train_one_epoch(model, train_loader, optimizer, loss_fn, scheduler, penalty=penalty,
                                clip_grad_norm=clip_grad_norm, device=device, progress=progress,
                                desc=f"epoch {epoch + 1}/{epochs}")
        record = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                  "val_loss": None, "val_accuracy": None, "lr": optimizer.param_groups[-1]["lr"]}
        if val_loader is not None:
            val = evaluate(model, val_loader, loss_fn, device=device, progress=progress, desc="validate")
            record["val_loss"], record["val_accuracy"] = val["loss"], val["accuracy"]
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        if progress and hasattr(epoch_bar, "write"):
            epoch_bar.write(_describe(record, epochs))
        if val_loader is None:
            continue
        value = record[monitor]
        if not math.isfinite(value):
            raise FloatingPointError(f"The validation loss became {value} in epoch {epoch + 1}: "
                                     f"the learning rate ({lr}) is probably too high.")
        if tracker.improved(value):
            history.best_epoch = epoch
            if restore_best:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        tracker.step(value)
        if stopper is not None and stopper.step(value):
            history.stopped_early = True
            break
    if history.best_epoch is None:
        history.best_epoch = len(history) - 1
    if restore_best and best_state is not None and history.best_epoch != len(history) - 1:
        model.load_state_dict(best_state)
    return history


def _describe(record: dict, epochs: int) -> str:
    text = (f"epoch {record['epoch'] + 1}/{epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.3f}")
    if record["val_loss"] is not None:
        text += f" | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.3f}"
    return text + f" | {record['seconds']:.1f}s"
