"""Layer freezing: which pretrained blocks learn, and BatchNorm in frozen parts.

A model is seen as a stack of *blocks* from the input up (embeddings, encoder layers...)
followed by the head (``ftlib.heads``). Freezing sets ``requires_grad=False`` on blocks so
the optimizer leaves them alone; ``freeze_up_to`` freezes the bottom of the stack, which
holds the most general features.

BatchNorm is the trap: ``requires_grad=False`` stops its *weights* from learning but in
``model.train()`` mode it still updates its running mean and variance from every batch,
so a "frozen" backbone drifts anyway. :func:`set_frozen_batchnorm_eval` puts BatchNorm
layers whose parameters are all frozen back in eval mode; ``ftlib.train`` calls it after
every ``model.train()``. LayerNorm (MiniLM, every transformer) keeps no running
statistics, so it needs no such handling.
"""
from __future__ import annotations

import torch
from torch import nn

from ftlib.heads import find_head

__all__ = [
    "layer_blocks",
    "block_names",
    "freeze_backbone",
    "freeze_up_to",
    "freeze_bottom",
    "unfreeze",
    "set_frozen_batchnorm_eval",
    "recalibrate_batchnorm",
    "GradualUnfreezing",
    "trainable_summary",
]


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _expand(prefix: str, module: nn.Module, skip: str | None) -> list[tuple[str, nn.Module]]:
    blocks = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if full == skip or not _has_params(child):
            continue
        if isinstance(child, nn.ModuleList):
            blocks += [(f"{full}.{i}", m) for i, m in enumerate(child) if _has_params(m)]
        elif any(isinstance(m, nn.ModuleList) for m in child.modules()):
            blocks += _expand(f"{full}.", child, skip)  # e.g. bert -> encoder -> layer.0..5
        else:
            blocks.append((full, child))
    return blocks


def layer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's blocks from input to output, without the head.

    Containers holding a ``nn.ModuleList`` are opened, so a BERT gives
    ``bert.embeddings, bert.encoder.layer.0 ... bert.encoder.layer.5, bert.pooler`` and
    EfficientNet gives ``_conv_stem, _bn0, _blocks.0 ... _blocks.15, _conv_head, _bn1``.
    """
    head_name, _ = find_head(model)
    return _expand("", model, skip=head_name)


def block_names(model: nn.Module) -> list[str]:
    """Names of :func:`layer_blocks`, bottom first."""
    return [name for name, _ in layer_blocks(model)]


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(flag)


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the head's (feature extraction / linear probing)."""
    _, head = find_head(model)
    _set_requires_grad(model, False)
    _set_requires_grad(head, True)
    return model


def freeze_up_to(model: nn.Module, block_name: str) -> nn.Module:
    """Freeze the blocks from the bottom up to and including ``block_name``.

    Blocks above it and the head become trainable.

    Raises
    ------
    ValueError
        When ``block_name`` is not one of :func:`block_names` (the message lists them).
    """
    names = block_names(model)
    if block_name not in names:
        raise ValueError(
            f"The 'block_name' parameter of freeze_up_to must be one of {names}. "
            f"Got {block_name!r}."
        )
    return freeze_bottom(model, names.index(block_name) + 1)


def freeze_bottom(model: nn.Module, num_blocks: int) -> nn.Module:
    """Freeze the lowest ``num_blocks`` blocks; everything above is trainable."""
    blocks = layer_blocks(model)
    if not 0 <= num_blocks <= len(blocks):
        raise ValueError(f"num_blocks must be between 0 and {len(blocks)}; got {num_blocks!r}.")
    _set_requires_grad(model, True)
    for _, block in blocks[:num_blocks]:
        _set_requires_grad(block, False)
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Make every parameter trainable."""
    _set_requires_grad(model, True)
    return model


def set_frozen_batchnorm_eval(model: nn.Module) -> int:
    """Put BatchNorm layers whose parameters are all frozen into eval mode.

    Call it after ``model.train()``. Their running statistics then stay as they were
    pretrained. Returns how many layers were switched.
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
                switched += 1
    return switched


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, *, device=None) -> int:
    """Recompute every BatchNorm layer's running statistics on ``loader``'s data.

    One pass in train mode under ``no_grad`` with a cumulative average (momentum None),
    so each layer ends with the mean and variance of its inputs over the whole pass;
    no weight changes. Pretrained statistics describe ImageNet, and a network that is
    fine-tuned normalizes with the new data's batch statistics instead: recalibrating
    first lets eval-mode features (for a linear probe, say) match what training will
    see (AdaBN, Li et al. 2016). Returns how many layers were recalibrated (0 for
    LayerNorm models such as MiniLM, which have no running statistics).
    """
    from ftlib.devices import logits_and_labels
    from ftlib.devices import to_device as _to

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    model.train()
    batches = 0
    try:
        for batch in loader:
            logits_and_labels(model, _to(batch, device))
            batches += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    if batches == 0:
        raise ValueError("The loader yielded no batches: nothing to compute BatchNorm statistics from.")
    return len(layers)


class GradualUnfreezing:
    """ULMFiT's schedule: train the head first, then unfreeze one more block per epoch.

    A callback: ``fit(..., callbacks=[GradualUnfreezing(model)])``. Epoch 0 trains only
    the head; at epoch ``e`` the top ``e * blocks_per_epoch`` blocks are trainable too.
    """

    def __init__(self, model: nn.Module, blocks_per_epoch: int = 1) -> None:
        if blocks_per_epoch < 1:
            raise ValueError(f"blocks_per_epoch must be >= 1; got {blocks_per_epoch!r}.")
        self.blocks_per_epoch = blocks_per_epoch
        self.num_blocks_ = len(layer_blocks(model))

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        trainable = min(self.num_blocks_, epoch * self.blocks_per_epoch)
        freeze_bottom(model, self.num_blocks_ - trainable)


def trainable_summary(model: nn.Module) -> str:
    """``"trainable 1,234 of 5,678 parameters (21.7%)"``."""
    from ftlib.models import count_parameters

    trainable, total = count_parameters(model)
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable {trainable:,} of {total:,} parameters ({share:.1f}%)"
