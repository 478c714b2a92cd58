"""L2-SP (Li et al. 2018): fine-tune with a pull towards the pretrained weights.

A small data set cannot pin down millions of weights, so fine-tuning needs a pull
towards something sensible. Weight decay pulls towards zero; L2-SP penalizes the
squared distance to the *pretrained* weights instead, ``alpha / 2 * sum ||w - w0||^2``
over the backbone. The new head has no pretrained value and is left out.

* :func:`train_l2sp` is the ``l2sp`` technique;
* :func:`l2sp` gives a ready callback for ``fit(..., callbacks=[...])``, built on
  :func:`l2sp_penalty` and the snapshot :func:`backbone_state`;
* :func:`weight_distance` says how far the backbone moved (``ftlib.forgetting`` too).

The other regularizers are arguments of :func:`ftlib.train.fit` (``loss_fn=``, with
``nn.CrossEntropyLoss(label_smoothing=)``, written out in
``ftlib.techniques.label_smoothing``; ``callbacks=[EarlyStopping(...)]``) and of ``ftlib.heads``
(``replace_head(..., dropout=)``, ``set_dropout``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from ftlib import arguments
from ftlib.techniques._registry import counts, entry

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["train_l2sp", "backbone_state", "l2sp_penalty", "l2sp", "L2SP", "weight_distance"]


def _check_alpha(alpha: float) -> None:
    arguments.number(alpha, "alpha", inclusive=True, meaning="0 turns the penalty off")


def _head_prefix(model: nn.Module) -> str:
    from ftlib.heads import find_head

    name, _ = find_head(model)
    return name + "."


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every backbone parameter (the head excluded), by name.

    Take it right after loading the pretrained weights; it is the ``w0`` of L2-SP and
    of :func:`weight_distance`.
    """
    head = _head_prefix(model)
    return {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith(head)}


def l2sp_penalty(model: nn.Module, pretrained_state: Mapping[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """``alpha / 2 * sum over backbone parameters of ||w - w0||^2``, differentiable.

    Parameters
    ----------
    model : nn.Module
        The model being fine-tuned.
    pretrained_state : mapping of str to Tensor
        The pretrained values ``w0`` by parameter name (:func:`backbone_state`).
        Entries of the head are ignored even if present: the new head has no
        pretrained value to return to.
    alpha : float
        Strength, >= 0. Li et al. use 0.01-0.1.

    Returns
    -------
    A scalar tensor; zero at the pretrained weights.

    Examples
    --------
    >>> from ftlib.models import TinyCNN
    >>> model = TinyCNN()
    >>> w0 = backbone_state(model)
    >>> float(l2sp_penalty(model, w0, alpha=0.1))
    0.0
    """
    import torch

    _check_alpha(alpha)
    if not isinstance(pretrained_state, Mapping):
        raise TypeError(f"pretrained_state must be a mapping of names to tensors (see backbone_state); "
                        f"got {type(pretrained_state).__name__}.")
    head = _head_prefix(model)
    terms = []
    for name, param in model.named_parameters():
        if name.startswith(head) or name not in pretrained_state:
            continue
        w0 = pretrained_state[name]
        if w0.shape != param.shape:
            raise ValueError(f"pretrained_state[{name!r}] has shape {tuple(w0.shape)} but the model's "
                             f"parameter has shape {tuple(param.shape)}.")
        terms.append((param - w0.to(param.device, param.dtype)).pow(2).sum())
    if not terms:
        raise ValueError("pretrained_state shares no backbone parameter name with the model; take it with "
                         "backbone_state(model) right after loading the pretrained weights.")
    return 0.5 * alpha * torch.stack(terms).sum()


def l2sp(model: nn.Module, alpha: float = 0.01) -> L2SP:
    """A :func:`ftlib.train.fit` callback whose penalty pulls the backbone to its current weights.

    Call it on the freshly loaded pretrained model: the weights are snapshotted now.
    Turn weight decay off in the optimizer: it would pull the same weights towards zero.

    Examples
    --------
    >>> from ftlib.models import TinyCNN
    >>> model = TinyCNN()
    >>> callback = l2sp(model, alpha=0.01)
    >>> float(callback.penalty(model))
    0.0
    >>> # fit(model, train_loader, val_loader, callbacks=[callback],
    >>> #     optimizer=adamw(param_groups(model, lr, head_lr_multiplier=1.0, weight_decay=0.0)))
    """
    _check_alpha(alpha)
    return L2SP(backbone_state(model), alpha)


class L2SP:
    """The L2-SP callback: ``penalty(model)`` is :func:`l2sp_penalty` towards ``state``.

    ``w0`` moves to the training device once, not every step: the snapshot is taken
    where the model was loaded (the CPU); ``fit`` then moves the model to its device,
    and copying ``w0`` there at every step would cost a host-to-GPU transfer of the
    whole backbone per batch.
    """

    def __init__(self, state: dict, alpha: float) -> None:
        self.state_, self.alpha = state, alpha

    def penalty(self, model: nn.Module) -> torch.Tensor:
        device = next(model.parameters()).device
        if next(iter(self.state_.values())).device != device:
            self.state_ = {k: v.to(device) for k, v in self.state_.items()}
        return l2sp_penalty(model, self.state_, self.alpha)


def weight_distance(model: nn.Module, pretrained_state: Mapping[str, torch.Tensor]) -> dict:
    """How far the backbone moved: ``||w - w0|| / ||w0||`` overall and per top-level block.

    Returns ``{"relative": float, "squared": float, "per_block": {name: relative}}``; the
    blocks are the first two parts of each parameter name (``bert.encoder`` ...).
    Computed without gradients.
    """
    import torch

    with torch.no_grad():
        head = _head_prefix(model)
        diff_sq, ref_sq = 0.0, 0.0
        blocks: dict[str, list[float]] = {}
        for name, param in model.named_parameters():
            if name.startswith(head) or name not in pretrained_state:
                continue
            w0 = pretrained_state[name].to(param.device, param.dtype)
            d, r = float((param - w0).pow(2).sum()), float(w0.pow(2).sum())
            diff_sq += d
            ref_sq += r
            acc = blocks.setdefault(".".join(name.split(".")[:2]), [0.0, 0.0])
            acc[0] += d
            acc[1] += r
    per_block = {k: (d / r) ** 0.5 if r > 0 else 0.0 for k, (d, r) in blocks.items()}
    return {"relative": (diff_sq / ref_sq) ** 0.5 if ref_sq > 0 else 0.0, "squared": diff_sq,
            "per_block": per_block}


def train_l2sp(model, train_loader, val_loader=None, *, epochs=3, lr=1e-4, alpha=0.01, seed=0, progress=False,
               **fit_kwargs) -> dict:
    """Fine-tune with the L2-SP penalty ``alpha/2 ||w - w0||^2`` on the backbone.

    The optimizer has no weight decay: it would pull the same weights towards zero,
    against the penalty. Returns the backbone's relative drift too.
    """
    from ftlib.freezing import unfreeze
    from ftlib.optim import adamw, param_groups
    from ftlib.train import fit

    arguments.number(alpha, "alpha", inclusive=True)
    unfreeze(model)
    w0 = backbone_state(model)
    optimizer = adamw(param_groups(model, lr, head_lr_multiplier=1.0, weight_decay=0.0))
    history = fit(model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer,
                  callbacks=[L2SP(w0, alpha)], seed=seed, progress=progress, **fit_kwargs)
    drift = weight_distance(model, w0)
    return {"history": history, "weight_drift": drift["relative"],
            "final_penalty": 0.5 * alpha * drift["squared"], **counts(model)}


TECHNIQUE = entry("l2sp", train_l2sp, "penalty alpha/2 ||w - w0||^2 towards the pretrained backbone", ["alpha"])
