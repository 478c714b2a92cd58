"""Step 6: training while monitoring.

``train_one_epoch`` and ``evaluate`` are the two halves of every training loop; ``fit``
runs them for several epochs and records a :class:`History` (train and validation loss
and accuracy, learning rate, seconds per epoch) with a progress bar and time estimate.
It supports early stopping on validation with best-weights restore, gradient clipping,
a warmup schedule, per-group learning rates, an extra penalty (L2-SP) and a per-epoch
hook (gradual unfreezing). A seed makes two runs give the same history. ``precision``
runs the steps under autocast, and under ``accelerate launch`` the same ``fit`` trains
on every process (how: ``ftlib.devices``).

Batches are dicts with a ``"labels"`` entry (see ``ftlib.data``). The test set is not
used here: ``ftlib.evaluate`` touches it once, at the end.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ftlib import arguments
from ftlib.devices import default_device, logits_and_labels, make_runner, reproducible, set_seed, to_device
from ftlib.freezing import set_frozen_batchnorm_eval
from ftlib.progress import progress_bar

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

    Causal-LM batches (``ftlib.sft``) carry one label per answer token, located by the
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
    deterministic: bool = True,
    device: torch.device | str | None = None,
    precision: str = "fp32",
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
    on loss would stop at epoch 1. ``precision``: "fp32", "bf16", "fp16" (autocast; fp16
    with a gradient scaler) or "auto" (what the hardware runs natively, see
    ``ftlib.devices.resolve_precision``); ``History.precision`` records what ran. A
    ``seed`` seeds Python, NumPy and PyTorch, the training loader's shuffling and, on
    CUDA, asks for deterministic kernels (``ftlib.devices.reproducible``) unless
    ``deterministic=False``: they make a GPU re-run repeat the same model, and cost time
    (the main job's steps on an H200: 1.6x at fp32, about 2x at bf16; see bench/RESULTS.md). On a
    CPU they change nothing.

    Under ``accelerate launch`` the same call trains on every process: each sees its
    share of the DataLoaders, gradients are averaged, validation metrics are gathered
    over the whole validation set, every process takes the same decisions (best epoch,
    early stopping) and ends with the same weights, and only the main process shows
    progress. Returns a :class:`History`.
    """
    from ftlib.optim import adamw, make_scheduler, param_groups

    arguments.integer(epochs, "epochs")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a number > 0; got {lr!r}.")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup is a fraction of all steps in [0, 1); got {warmup!r}.")
    if monitor not in ("val_loss", "val_accuracy"):
        raise ValueError(f"monitor must be 'val_loss' or 'val_accuracy'; got {monitor!r}.")
    if (patience is not None or restore_best) and val_loader is None:
        patience, restore_best = None, False  # nothing to monitor without validation data
    # Gradual unfreezing changes requires_grad between epochs: DDP must know every
    # parameter from the start and find, at each step, those without a gradient.
    runner = make_runner(device, precision, find_unused_parameters=on_epoch_start is not None)
    device = runner.device
    progress = progress and runner.is_main_process
    if seed is not None:
        set_seed(seed)
        generator = getattr(train_loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)  # the same shuffling order on every run
    model.to(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    flags = {p: p.requires_grad for p in model.parameters()}
    if on_epoch_start is not None:
        # Blocks unfrozen later must already be in the optimizer (and DDP); frozen ones
        # get no gradient, and AdamW skips parameters without one.
        for p in flags:
            p.requires_grad_(True)
    if optimizer is None:
        optimizer = adamw(param_groups(model, lr, head_lr_multiplier, layer_decay, weight_decay))
    total_steps = epochs * len(train_loader)  # counted on the whole loader, before sharding
    scheduler = make_scheduler(optimizer, schedule, total_steps=total_steps,
                               warmup_steps=int(warmup * total_steps))
    inner = model
    try:
        with reproducible(device) if seed is not None and deterministic else contextlib.nullcontext():
            model, optimizer, scheduler, train_loader, val_loader = runner.prepare(
                model, optimizer, scheduler, train_loader, val_loader)
            for p, flag in flags.items():
                p.requires_grad_(flag)
            history = _epochs(runner, model, inner, train_loader, val_loader, optimizer, scheduler, loss_fn,
                              epochs=epochs, lr=lr, penalty=penalty, clip_grad_norm=clip_grad_norm,
                              patience=patience, min_delta=min_delta, monitor=monitor, restore_best=restore_best,
                              on_epoch_start=on_epoch_start, progress=progress)
    finally:
        runner.close()
    history.precision = runner.precision
    return history


def _epochs(runner, model, inner, train_loader, val_loader, optimizer, scheduler, loss_fn, *, epochs, lr, penalty,
            clip_grad_norm, patience, min_delta, monitor, restore_best, on_epoch_start, progress) -> History:
    """fit's loop over epochs; ``model`` is what trains (DDP-wrapped under several processes),
    ``inner`` the model itself, whose weights are kept, restored and shown to hooks."""
    device = runner.device
    stopper = EarlyStopping(patience, min_delta, "min" if monitor == "val_loss" else "max") if patience else None
    tracker = EarlyStopping(1, 0.0, "min" if monitor == "val_loss" else "max")  # best epoch only
    best_state = None
    history = History()
    # The epochs bar stays when done (how long the run took); each epoch's bar goes.
    epoch_bar = progress_bar(range(epochs), progress, desc="epochs", unit="epoch", leave=True)
    for epoch in epoch_bar:
        start = time.perf_counter()
        if on_epoch_start is not None:
            on_epoch_start(inner, epoch)
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
        if tracker.improved(value):
            history.best_epoch = epoch
            if restore_best:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in inner.state_dict().items()}
        tracker.step(value)
        if stopper is not None and stopper.step(value):
            history.stopped_early = True
            break
    if history.best_epoch is None:
        history.best_epoch = len(history) - 1
    if restore_best and best_state is not None and history.best_epoch != len(history) - 1:
        inner.load_state_dict(best_state)
    return history


def _describe(record: dict, epochs: int) -> str:
    text = (f"epoch {record['epoch'] + 1}/{epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.3f}")
    if record["val_loss"] is not None:
        text += f" | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.3f}"
    return text + f" | {record['seconds']:.1f}s"
