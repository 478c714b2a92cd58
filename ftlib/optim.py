"""Step 5: hyperparameters - parameter groups, learning-rate schedules, the LR finder.

Differential (discriminative) learning rates: the new head learns fastest, the top of
the backbone at ``base_lr``, and each block further down at ``layer_decay`` times the
rate of the block above it (ULMFiT divides by 2.6 per block: ``layer_decay=1/2.6``;
Sun et al. 2019 use 0.95 per layer for BERT). Weight decay applies to weight matrices
and convolution kernels only, never to biases or normalization parameters (decaying a
LayerNorm gain towards zero is not regularization, it is damage).

The groups are plain dicts: they go straight into any ``torch.optim`` optimizer and,
through ``optimizers=(optimizer, scheduler)``, into the Hugging Face ``Trainer``.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterable

import torch
from torch import nn

from ftlib import arguments
from ftlib.freezing import layer_blocks
from ftlib.heads import find_head

__all__ = [
    "param_groups",
    "adamw",
    "warmup_cosine",
    "warmup_linear",
    "make_scheduler",
    "SCHEDULES",
    "lr_range_test",
    "plot_lr_range_test",
]


def _check_positive(name: str, value: float) -> None:
    arguments.number(value, name)


def param_groups(
    model: nn.Module,
    base_lr: float,
    head_lr_multiplier: float = 10.0,
    layer_decay: float = 1.0,
    weight_decay: float = 0.01,
) -> list[dict]:
    """Optimizer parameter groups with layer-wise learning rates and selective decay.

    The head gets ``base_lr * head_lr_multiplier``; the top backbone block gets
    ``base_lr``, the one below ``base_lr * layer_decay``, and so on down to the bottom
    block (``layer_decay=1`` gives one rate for the whole backbone). Inside each block,
    parameters with two or more dimensions get ``weight_decay``, the rest (biases,
    normalization gains and shifts) get 0. Frozen parameters appear in no group, every
    trainable one in exactly one. Each group carries a ``"name"`` for reading.

    Examples
    --------
    >>> from ftlib.models import TinyCNN
    >>> groups = param_groups(TinyCNN(), base_lr=1e-3, layer_decay=0.5)
    >>> [(g["name"], g["lr"]) for g in groups if g["weight_decay"]]
    [('blocks.0', 0.00025), ('blocks.1', 0.0005), ('blocks.2', 0.001), ('fc', 0.01)]
    >>> optimizer = torch.optim.AdamW(groups)
    """
    _check_positive("base_lr", base_lr)
    _check_positive("head_lr_multiplier", head_lr_multiplier)
    _check_positive("layer_decay", layer_decay)
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}.")

    head_name, head = find_head(model)
    blocks = layer_blocks(model)
    depth = len(blocks)
    # (name, module, lr) from bottom to top, then the head.
    stages = [(name, module, base_lr * layer_decay ** (depth - 1 - i)) for i, (name, module) in enumerate(blocks)]
    stages.append((head_name, head, base_lr * head_lr_multiplier))

    groups: list[dict] = []
    seen: set[int] = set()
    for name, module, lr in stages:
        decay, no_decay = [], []
        for param in module.parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (decay if param.ndim >= 2 else no_decay).append(param)
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name} (no decay)"})

    # Parameters registered directly on a container, outside any block, would be lost.
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"Trainable parameters outside every block and the head: {missing[:5]}.")
    return groups


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fused implementation where PyTorch has one.

    Fused AdamW updates all parameters in one kernel: the same algorithm and results
    (up to float rounding), but on a 2-core CPU the update of MiniLM's 22.7M parameters
    drops from 0.15 s to 0.03 s per step, about a sixth of the whole step. Parameters
    PyTorch cannot fuse (for example on a device without a fused kernel) fall back to
    the default implementation.
    """
    params = list(params)
    if "fused" not in kwargs and "foreach" not in kwargs:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except RuntimeError:
            pass
    return torch.optim.AdamW(params, **kwargs)


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need total_steps > 0 and 0 <= warmup_steps <= total_steps; got "
            f"total_steps={total_steps!r}, warmup_steps={warmup_steps!r}."
        )


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate at ``step``: linear warmup from 0, then cosine decay to 0.

    ``lr = base_lr * step / warmup_steps`` during warmup, then
    ``base_lr * 0.5 * (1 + cos(pi * progress))`` with ``progress`` going from 0 (end of
    warmup) to 1 (``total_steps``). Steps past the end stay at 0.
    """
    _check_steps(total_steps, warmup_steps)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warmup from 0, then linear decay to 0 at ``total_steps`` (BERT's schedule)."""
    _check_steps(total_steps, warmup_steps)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return base_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _constant(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    return base_lr * min(1.0, step / warmup_steps) if warmup_steps else base_lr


SCHEDULES: dict[str, Callable[[int, int, int, float], float]] = {
    "linear": warmup_linear,
    "cosine": warmup_cosine,
    "constant": _constant,
}


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str = "linear",
    *,
    total_steps: int,
    warmup_steps: int = 0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler that scales every group's own rate by the chosen shape.

    ``schedule`` is one of ``"linear"``, ``"cosine"``, ``"constant"`` (each after a
    linear warmup of ``warmup_steps``) or ``"onecycle"`` (PyTorch's OneCycleLR with each
    group's rate as its peak). Call ``scheduler.step()`` after every optimizer step.
    """
    if schedule == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        pct = warmup_steps / total_steps if warmup_steps else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct)
    if schedule not in SCHEDULES:
        raise ValueError(
            f"The 'schedule' parameter must be one of {sorted([*SCHEDULES, 'onecycle'])}. Got {schedule!r}."
        )
    shape = SCHEDULES[schedule]
    shape(0, total_steps, warmup_steps, 1.0)  # validates the step counts
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: shape(step, total_steps, warmup_steps, 1.0)
    )


def lr_range_test(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 100,
    smoothing: float = 0.05,
    diverge_factor: float = 4.0,
    optimizer_factory: Callable | None = None,
) -> dict:
    """The learning-rate range test (Smith 2017; fastai's ``lr_find``).

    Trains for up to ``num_steps`` batches while the rate grows exponentially from
    ``start_lr`` to ``end_lr``, recording the smoothed loss, and stops once the loss
    exceeds ``diverge_factor`` times its best. The model's weights are restored
    afterwards. Returns ``{"lrs", "losses", "suggestion"}``: the suggestion is the rate
    of the steepest descent of the smoothed loss, a common starting point (a rate a
    few times below the minimum of the curve).
    """
    from ftlib.devices import logits_and_labels
    from ftlib.devices import to_device as _to

    _check_positive("start_lr", start_lr)
    _check_positive("end_lr", end_lr)
    if end_lr <= start_lr:
        raise ValueError(f"end_lr must be larger than start_lr; got {start_lr!r} and {end_lr!r}.")
    if num_steps < 5:
        raise ValueError(f"num_steps must be at least 5; got {num_steps!r}.")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (optimizer_factory or (lambda ps: torch.optim.AdamW(ps, lr=start_lr)))(params)
    gamma = (end_lr / start_lr) ** (1.0 / (num_steps - 1))
    lrs, losses = [], []
    smoothed, best = None, math.inf
    model.train()
    device = next(model.parameters()).device
    try:
        step = 0
        while step < num_steps:
            for batch in loader:
                if step >= num_steps:
                    break
                batch = _to(batch, device)  # the model's device, as fit does
                lr = start_lr * gamma**step
                for group in optimizer.param_groups:
                    group["lr"] = lr
                logits, labels = logits_and_labels(model, batch)
                loss = loss_fn(logits, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                value = loss.item()
                smoothed = value if smoothed is None else smoothing * value + (1 - smoothing) * smoothed
                lrs.append(lr)
                losses.append(smoothed)
                best = min(best, smoothed)
                step += 1
                if not math.isfinite(smoothed) or smoothed > diverge_factor * best:
                    step = num_steps
                    break
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    return {"lrs": lrs, "losses": losses, "suggestion": _steepest(lrs, losses)}


def _steepest(lrs: list[float], losses: list[float]) -> float | None:
    if len(lrs) < 3:
        return None
    # Slope of loss against log(lr); skip the noisy first steps and the divergence.
    stop = int(min(range(len(losses)), key=losses.__getitem__)) + 1
    start = min(len(lrs) // 10, max(0, stop - 2))
    logs = [math.log(lr) for lr in lrs]
    slopes = [
        (losses[i + 1] - losses[i]) / (logs[i + 1] - logs[i]) for i in range(start, max(start + 1, stop - 1))
    ]
    return lrs[start + min(range(len(slopes)), key=slopes.__getitem__)]


def plot_lr_range_test(result: dict, ax=None):
    """Plot a :func:`lr_range_test` result (log-scaled rate) and mark the suggestion."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result["lrs"], result["losses"])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    if result.get("suggestion"):
        ax.axvline(result["suggestion"], color="tab:red", linestyle="--", label=f"suggestion {result['suggestion']:.1e}")
        ax.legend()
    return ax
