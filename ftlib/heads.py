"""Step 4: modifying the model - a new classification head and dropout.

A pretrained classifier ends in a layer sized for its pretraining task (1000 ImageNet
classes, or whatever head a checkpoint carried). Fine-tuning replaces it with a freshly
initialised layer for the new task's K classes, optionally with dropout in front.
The head is found by name: ``classifier`` (Hugging Face), ``fc`` (torchvision, TinyCNN),
``_fc`` (EfficientNet-Lite) or ``head`` (timm).
"""
from __future__ import annotations

from torch import nn

from ftlib import arguments

__all__ = ["HEAD_NAMES", "find_head", "head_in_features", "replace_head", "set_dropout"]

HEAD_NAMES = ("classifier", "fc", "_fc", "head")


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """Return ``(name, module)`` of the model's classification head.

    Raises
    ------
    ValueError
        When the model has none of the attributes in :data:`HEAD_NAMES`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    for name in HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return name, module
    children = [name for name, _ in model.named_children()]
    raise ValueError(
        f"Could not find a classification head on {type(model).__name__}: expected an "
        f"attribute named one of {list(HEAD_NAMES)}, found children {children}. Rename your "
        "head to one of these names or replace it yourself."
    )


def head_in_features(head: nn.Module) -> int:
    """Input width of a head: the ``in_features`` of its first ``nn.Linear``."""
    if isinstance(head, nn.Linear):
        return head.in_features
    for module in head.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
    raise ValueError(f"The head {head!r} contains no nn.Linear layer; cannot tell its input width.")


def replace_head(model: nn.Module, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Replace the classification head with a new one for ``num_classes``, in place.

    The new head is ``nn.Linear(in_features, num_classes)`` (preceded by
    ``nn.Dropout(dropout)`` when ``dropout > 0``), on the same device and dtype as the
    old one. Hugging Face models also get ``config.num_labels`` updated.

    Examples
    --------
    >>> from ftlib.models import TinyCNN
    >>> model = replace_head(TinyCNN(num_classes=10), num_classes=3, dropout=0.1)
    >>> model.fc
    Sequential(
      (0): Dropout(p=0.1, inplace=False)
      (1): Linear(in_features=64, out_features=3, bias=True)
    )
    """
    arguments.integer(num_classes, "num_classes", minimum=2)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}.")
    name, old = find_head(model)
    in_features = head_in_features(old)
    reference = next(old.parameters(), None)
    linear = nn.Linear(in_features, num_classes)
    if reference is not None:
        linear = linear.to(device=reference.device, dtype=reference.dtype)
    head: nn.Module = nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear
    setattr(model, name, head)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_labels"):
        config.num_labels = num_classes
        model.num_labels = num_classes
    return model


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every ``nn.Dropout`` in the model; returns how many changed.

    Hugging Face models apply attention dropout through their config as well, so
    ``config.hidden_dropout_prob`` / ``attention_probs_dropout_prob`` are updated too.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p must be in [0, 1); got {p!r}.")
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            changed += 1
    config = getattr(model, "config", None)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if config is not None and hasattr(config, key):
            setattr(config, key, p)
    return changed

