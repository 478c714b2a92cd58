"""Step 6: training while monitoring.

``train_one_epoch`` and ``evaluate`` are the two halves of every training loop; ``fit``
runs them for several epochs and records a :class:`History` (train and validation loss
and accuracy, learning rate, seconds per epoch) with a progress bar and time estimate.
It restores the best validation epoch's weights and supports early stopping, gradient
clipping, a warmup schedule, any optimizer (per-group learning rates: ``ftlib.optim``)
and callbacks: an extra penalty (L2-SP) or a per-epoch hook (gradual unfreezing). A
seed makes two runs give the same history. How a run executes (device, precision,
deterministic GPU kernels) is one :class:`~ftlib.devices.Runtime`, and under
``accelerate launch`` the same ``fit`` trains on every process (how: ``ftlib.devices``).

Batches are dicts with a ``"labels"`` entry (see ``ftlib.data``). The test set is not
used here: ``ftlib.evaluate`` touches it once, at the end.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ftlib import arguments
from ftlib.devices import (Runtime, default_device, logits_and_labels, make_runner, reproducible, set_seed,
                           to_device)
from ftlib.freezing import set_frozen_batchnorm_eval
from ftlib.progress import progress_bar

__all__ = [
    "set_seed",
    "default_device",
    "logits_and_labels",
    "Runtime",
    "train_one_epoch",
    "evaluate",
    "predict",
    "EarlyStopping",
    "History",
    "fit",
]


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
    precision: str = "fp32",
    progress: bool = False,
    desc: str = "train",
    runner=None,
) -> dict:
    """One pass over ``loader``: forward, loss, backward, (clip), step, schedule.

    The model is put in train mode, with BatchNorm layers of frozen blocks kept in eval
    mode so their running statistics do not move. ``penalty(model)``, when given, is
    added to the loss (L2-SP, for example). ``precision`` ("fp32", "bf16", "fp16" or
    "auto", see ``ftlib.devices.resolve_precision``) runs the forward pass under
    autocast; fp16 scales the loss so small gradients do not underflow. Returns
    ``{"loss", "accuracy", "seconds", "steps"}`` with the loss averaged over examples.
    ``runner`` (from ``ftlib.devices.make_runner``, made by ``fit``) says how steps run
    when several processes train together; the metrics then cover all of them.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    runner = runner or make_runner(device, precision, one_process=True)
    inner = runner.unwrap_model(model)  # names and blocks without DDP's "module." prefix
    model.train()
    set_frozen_batchnorm_eval(inner)
    start = time.perf_counter()
    # Sums stay on the device: reading them (.item()) would wait for the GPU at every step.
    total_loss = torch.zeros((), dtype=_sum_dtype(device), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, steps = 0, 0
    bar = progress_bar(loader, progress, desc=desc, unit="batch")
    for batch in bar:
        batch = to_device(batch, device)
        with runner.autocast():
            logits, labels = logits_and_labels(model, batch)
            loss = loss_fn(logits, labels)
        objective = loss + penalty(inner) if penalty is not None else loss
        optimizer.zero_grad(set_to_none=True)
        runner.backward(objective)
        runner.step(optimizer, model.parameters(), clip_grad_norm)
        if scheduler is not None:
            scheduler.step()
        n = labels.shape[0]
        total_loss += loss.detach().to(total_loss.dtype) * n
        correct += (logits.detach().argmax(dim=-1) == labels).sum()
        seen += n
        steps += 1
        if progress and steps % 10 == 0:  # the one synchronisation, every 10 steps, for the bar
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}")
    if seen == 0:
        raise ValueError("The training loader yielded no batches.")
    runner.sync_buffers(inner)
    totals = runner.reduce_sum(torch.stack([total_loss.double(), correct.double(),
                                            torch.tensor(float(seen), dtype=torch.float64, device=device)]))
    total_loss_, correct_, seen_ = totals.tolist()
    return {"loss": total_loss_ / seen_, "accuracy": correct_ / seen_,
            "seconds": time.perf_counter() - start, "steps": steps}


def _sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums (what Python floats gave), where the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _example_rows(batch: dict, labels: torch.Tensor) -> torch.Tensor | None:
    """The row of the batch each label belongs to, when labels are not one per row.

    Causal-LM batches (``ftlib.generative.sft``) carry one label per answer token, located by the
    (B, T) ``target_mask``; a classifier's labels are one per row (None).
    """
    first = next((v for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)), None)
    if first is None or first.shape[0] == labels.shape[0]:
        return None
    if "target_mask" in batch:
        return batch["target_mask"].nonzero()[:, 0]
    raise ValueError(f"{labels.shape[0]} labels for a batch of {first.shape[0]} rows, and no 'target_mask' "
                     "saying which row each label belongs to: the metrics cannot be gathered over processes.")


def _per_example_loss(loss_fn: Callable, logits: torch.Tensor, labels: torch.Tensor,
                      mean: torch.Tensor) -> torch.Tensor:
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return nn.functional.cross_entropy(logits.float(), labels, weight=loss_fn.weight,
                                           ignore_index=loss_fn.ignore_index, reduction="none",
                                           label_smoothing=loss_fn.label_smoothing)
    return mean.expand(labels.shape[0])  # another loss: its batch mean stands for each example


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    loss_fn: Callable | None = None,
    *,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    progress: bool = False,
    desc: str = "eval",
    runner=None,
) -> dict:
    """Loss and accuracy on ``loader`` in eval mode, without gradients.

    The model's previous train/eval mode is restored afterwards. Returns
    ``{"loss", "accuracy", "y_true", "y_pred"}`` (the last two as NumPy arrays). Under
    ``accelerate launch`` (a ``runner`` from ``fit`` and a loader it prepared), each
    process evaluates its share and the figures are gathered over the whole loader,
    each example counted once (the padding ``accelerate`` adds to even out the last
    batches is dropped).
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    runner = runner or make_runner(device, precision, one_process=True)
    gather = runner.shards(loader)
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=_sum_dtype(device), device=device)
    y_true, y_pred, sums = [], [], []
    try:
        for batch in progress_bar(loader, progress, desc=desc, unit="batch"):
            batch = to_device(batch, device)
            with runner.autocast():
                logits, labels = logits_and_labels(model, batch)
                loss = loss_fn(logits, labels)
            predicted = logits.argmax(dim=-1)
            if not gather:
                total_loss += loss.to(total_loss.dtype) * labels.shape[0]
                y_true.append(labels)
                y_pred.append(predicted)
                continue
            losses = _per_example_loss(loss_fn, logits, labels, loss).double()
            rows = _example_rows(batch, labels)
            if rows is None:  # one label per row: gather the rows themselves
                labels, predicted, losses = runner.gather_for_metrics((labels, predicted, losses))
                y_true.append(labels)
                y_pred.append(predicted)
                sums.append(torch.stack([losses.sum(), (predicted == labels).sum().double(),
                                         torch.tensor(float(len(labels)), dtype=torch.float64, device=device)]))
                continue
            per_row = torch.zeros(len(batch["target_mask"]), 3, dtype=torch.float64, device=device)
            per_row.index_add_(0, rows, torch.stack([losses, (predicted == labels).double(),
                                                     torch.ones_like(losses)], dim=1))
            sums.append(runner.gather_for_metrics(per_row).sum(dim=0))
    finally:
        model.train(was_training)
    if not y_true and not sums:
        raise ValueError("The evaluation loader yielded no batches.")
    y_true_np = torch.cat(y_true).cpu().numpy() if y_true else None
    y_pred_np = torch.cat(y_pred).cpu().numpy() if y_pred else None
    if not gather:
        return {"loss": total_loss.item() / len(y_true_np), "accuracy": float((y_true_np == y_pred_np).mean()),
                "y_true": y_true_np, "y_pred": y_pred_np}
    loss_sum, correct, count = torch.stack(sums).sum(dim=0).tolist()
    return {"loss": loss_sum / count, "accuracy": correct / count, "y_true": y_true_np, "y_pred": y_pred_np}


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
        arguments.integer(patience, "patience")
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
        self.precision: str | None = None  # what fit ran: "fp32", "bf16" or "fp16"

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
    optimizer: torch.optim.Optimizer | None = None,
    schedule: str | Callable = "linear",
    loss_fn: Callable | None = None,
    clip_grad_norm: float | None = 1.0,
    callbacks: Sequence = (),
    seed: int | None = 0,
    runtime: Runtime | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` for ``epochs`` epochs, validating after each one.

    At the end the weights of the best validation epoch are put back: the best on
    validation accuracy, or on what an early stopper among the ``callbacks`` monitors. Under ``accelerate
    launch`` the same call trains on every process: each sees its share of the
    DataLoaders, gradients are averaged, validation metrics are gathered over the whole
    validation set, every process takes the same decisions (best epoch, early stopping)
    and ends with the same weights, and only the main process shows progress.

    Parameters
    ----------
    model : nn.Module
        The model with its head (``ftlib.heads``); moved to the runtime's device.
    train_loader : iterable of dict
        Training batches, dicts with a ``"labels"`` entry (``ftlib.data.make_loader``).
    val_loader : iterable of dict, optional
        Validation batches, evaluated after each epoch. Without them nothing is
        monitored: no early stopping, and the last epoch's weights are kept.
    epochs : int
        Passes over ``train_loader`` (fewer when an early stopper stops the run).
    lr : float
        The learning rate (> 0) of the default optimizer.
    optimizer : torch.optim.Optimizer, optional
        Default: AdamW at ``lr`` for every trainable parameter, head included, with
        decoupled weight decay 0.01 on weight matrices only (not on biases and norms),
        that is ``adamw(param_groups(model, lr, head_lr_multiplier=1.0))`` from
        ``ftlib.optim``. For a faster head, layer-wise rates or another weight decay,
        pass ``adamw(param_groups(model, lr, head_lr_multiplier, layer_decay, weight_decay))``.
    schedule : {"linear", "cosine", "constant"} or callable
        The learning rate at each step: "linear" (warmup over the first 10% of the
        steps, then linear decay to 0), "cosine" (the same warmup, then cosine decay)
        or "constant" (no warmup). Anything else: a callable ``(optimizer, total_steps)``
        returning a scheduler that is stepped after every optimizer step, for example
        ``lambda opt, n: make_scheduler(opt, "linear", total_steps=n, warmup_steps=n // 20)``
        with ``ftlib.optim.make_scheduler``.
    loss_fn : callable, optional
        ``loss_fn(logits, labels)``; default ``nn.CrossEntropyLoss()``. Label smoothing
        is ``nn.CrossEntropyLoss(label_smoothing=0.1)``.
    clip_grad_norm : float or None
        Gradients are clipped to this global norm; None does not clip.
    callbacks : sequence
        What else happens during training, any of:

        * objects with an ``on_epoch_start(model, epoch)`` method, called before each
          epoch (``ftlib.freezing.GradualUnfreezing``). With one, every parameter is
          trainable while the default optimizer is built, so blocks unfrozen later are
          in it (build your own optimizer the same way);
        * objects with a ``penalty(model)`` method, a scalar tensor added to the loss at
          every step (``ftlib.techniques.l2sp.l2sp``);
        * at most one early stopper, an object with a ``step(value) -> bool`` method
          (True: stop) and a ``mode``: ``EarlyStopping(patience, min_delta, mode)`` stops
          the run once the monitored value has not improved for ``patience`` epochs; it
          monitors val_loss with ``mode="min"``, val_accuracy with ``"max"``, and keeps
          its state (one per run).

        Without an early stopper every epoch runs and the best epoch is chosen on
        val_accuracy, the metric we report: while fine-tuning, validation loss often
        rises (the model grows more confident on the examples it gets wrong) while
        accuracy still improves, so choosing on loss would stop at epoch 1.
    seed : int or None
        Seeds Python, NumPy, PyTorch and the training loader's shuffling: the same seed
        gives the same history. None seeds nothing.
    runtime : Runtime, optional
        How the run executes (``ftlib.devices.Runtime``): the device, the precision and,
        with a seed, deterministic GPU kernels; default ``Runtime()``. What precision and
        determinism cost and buy on a GPU: docs/scaling.md.
    progress : bool
        Progress bars with a time estimate (on the main process only).

    Returns
    -------
    History
        A record per epoch, the best epoch, whether the run stopped early, and the
        precision that ran ("fp32", "bf16" or "fp16").
    """
    from ftlib.optim import adamw, param_groups

    arguments.integer(epochs, "epochs")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a number > 0; got {lr!r}.")
    hooks, penalty, early_stopping = _callbacks(callbacks)
    runtime = _runtime(runtime)
    if early_stopping is not None and getattr(early_stopping, "best_", None) is not None:
        raise ValueError("The early stopper has been used already (it keeps its state): give each fit a new one.")
    if val_loader is None:
        early_stopping = None  # nothing to monitor without validation data
    # Gradual unfreezing changes requires_grad between epochs: DDP must know every
    # parameter from the start and find, at each step, those without a gradient.
    runner = runtime.runner(find_unused_parameters=bool(hooks))
    device = runner.device
    progress = progress and runner.is_main_process
    if seed is not None:
        set_seed(seed)
        generator = getattr(train_loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)  # the same shuffling order on every run
    model.to(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    flags = {p: p.requires_grad for p in model.parameters()}
    if hooks:
        # Blocks unfrozen later must already be in the optimizer (and DDP); frozen ones
        # get no gradient, and AdamW skips parameters without one.
        for p in flags:
            p.requires_grad_(True)
    if optimizer is None:
        optimizer = adamw(param_groups(model, lr, head_lr_multiplier=1.0))
    total_steps = epochs * len(train_loader)  # counted on the whole loader, before sharding
    scheduler = _scheduler(schedule, optimizer, total_steps)
    inner = model
    try:
        with reproducible(device) if seed is not None and runtime.deterministic else contextlib.nullcontext():
            model, optimizer, scheduler, train_loader, val_loader = runner.prepare(
                model, optimizer, scheduler, train_loader, val_loader)
            for p, flag in flags.items():
                p.requires_grad_(flag)
            history = _epochs(runner, model, inner, train_loader, val_loader, optimizer, scheduler, loss_fn,
                              epochs=epochs, lr=lr, hooks=hooks, penalty=penalty, clip_grad_norm=clip_grad_norm,
                              early_stopping=early_stopping, progress=progress)
    finally:
        runner.close()
    history.precision = runner.precision
    return history


def _callbacks(callbacks) -> tuple[list, Callable | None, object | None]:
    """The callbacks' ``on_epoch_start`` methods, their penalties summed into one, and the early stopper."""
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of callbacks; got {callbacks!r}.")
    callbacks = list(callbacks)
    for callback in callbacks:
        if isinstance(callback, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)):
            raise TypeError("a learning-rate scheduler is not a callback: pass it as schedule=lambda optimizer, "
                            "total_steps: <scheduler> (fit steps it after every optimizer step).")
        if not any(hasattr(callback, method) for method in ("on_epoch_start", "penalty", "step")):
            raise TypeError(f"a callback needs an on_epoch_start(model, epoch) or a penalty(model) method, or is "
                            f"an early stopper with step(value) (EarlyStopping); got {callback!r}.")
    stoppers = [c for c in callbacks if hasattr(c, "step")]
    if len(stoppers) > 1:
        raise ValueError(f"callbacks hold {len(stoppers)} early stoppers; give fit one.")
    hooks = [c.on_epoch_start for c in callbacks if hasattr(c, "on_epoch_start")]
    penalties = [c.penalty for c in callbacks if hasattr(c, "penalty")]
    return hooks, (lambda model: sum(p(model) for p in penalties)) if penalties else None, \
        (stoppers[0] if stoppers else None)


def _runtime(runtime: Runtime | None) -> Runtime:
    if runtime is None:
        return Runtime()
    if not isinstance(runtime, Runtime):
        raise TypeError(f"runtime must be an ftlib.devices.Runtime (device, precision, deterministic); "
                        f"got {runtime!r}.")
    return runtime


# The share of all steps spent warming up, by schedule name.
_WARMUP = {"linear": 0.1, "cosine": 0.1, "constant": 0.0}


def _scheduler(schedule: str | Callable, optimizer: torch.optim.Optimizer, total_steps: int):
    from ftlib.optim import make_scheduler

    if callable(schedule):
        return schedule(optimizer, total_steps)
    if schedule not in _WARMUP:
        raise ValueError(f"schedule must be one of {list(_WARMUP)} or a callable (optimizer, total_steps) -> "
                         f"scheduler; got {schedule!r}.")
    return make_scheduler(optimizer, schedule, total_steps=total_steps,
                          warmup_steps=int(_WARMUP[schedule] * total_steps))


def _epochs(runner, model, inner, train_loader, val_loader, optimizer, scheduler, loss_fn, *, epochs, lr, hooks,
            penalty, clip_grad_norm, early_stopping, progress) -> History:
    """fit's loop over epochs; ``model`` is what trains (DDP-wrapped under several processes),
    ``inner`` the model itself, whose weights are kept, restored and shown to callbacks."""
    device = runner.device
    mode = getattr(early_stopping, "mode", "min") if early_stopping is not None else "max"
    monitor = "val_loss" if mode == "min" else "val_accuracy"
    tracker = EarlyStopping(1, 0.0, mode)  # best epoch only
    best_state = None
    history = History()
    # The epochs bar stays when done (how long the run took); each epoch's bar goes.
    epoch_bar = progress_bar(range(epochs), progress, desc="epochs", unit="epoch", leave=True)
    for epoch in epoch_bar:
        start = time.perf_counter()
        for hook in hooks:
            hook(inner, epoch)
        train = train_one_epoch(model, train_loader, optimizer, loss_fn, scheduler, penalty=penalty,
                                clip_grad_norm=clip_grad_norm, device=device, progress=progress,
                                desc=f"epoch {epoch + 1}/{epochs}", runner=runner)
        record = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                  "val_loss": None, "val_accuracy": None, "lr": optimizer.param_groups[-1]["lr"]}
        if val_loader is not None:
            # The model itself, not DDP's wrapper: evaluation needs no gradient sync, and
            # processes may see different numbers of batches where the loader is not sharded.
            val = evaluate(inner, val_loader, loss_fn, device=device, progress=progress, desc="validate",
                           runner=runner)
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
        improved = tracker.improved(value)
        tracker.step(value)
        stop = early_stopping is not None and early_stopping.step(value)
        if improved:
            history.best_epoch = epoch
            if epoch < epochs - 1 and not stop:  # a last epoch's weights are the final ones already
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in inner.state_dict().items()}
        if stop:
            history.stopped_early = True
            break
    if history.best_epoch is None:
        history.best_epoch = len(history) - 1
    if best_state is not None and history.best_epoch != len(history) - 1:
        inner.load_state_dict(best_state)
    return history


def _describe(record: dict, epochs: int) -> str:
    text = (f"epoch {record['epoch'] + 1}/{epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.3f}")
    if record["val_loss"] is not None:
        text += f" | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.3f}"
    return text + f" | {record['seconds']:.1f}s"
