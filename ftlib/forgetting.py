"""Forgetting: how much of the pretraining task survives fine-tuning.

Fine-tuning is judged by its gain on the new task; this module measures the other
side of the trade. For the ImageNet model, the original 1000-class head (``_fc``) is
re-attached to the fine-tuned backbone and both models classify the same natural
photos: the share of photos whose top-1 ImageNet class is unchanged is the
*agreement* (1.0: nothing forgotten). The relative drift ``||w - w0|| / ||w0||`` of the
backbone's weights says how far fine-tuning moved them.

Fine-tuning changes BatchNorm running statistics too (buffers, not parameters): they
count in the agreement (the re-attached head sees them) but not in the weight drift.
A second agreement puts the pretrained statistics back, separating what the weights
forgot from what the statistics did.

The photos are crops of scikit-learn's two sample images (a temple and a flower):
real ImageNet-like content that ships offline. The same photos give the check before any
fine-tuning, :func:`sanity_check_imagenet` (step 3: the registered EfficientNet knows
ImageNet, so its weights really loaded).

What a chat model forgets is measured by :mod:`ftlib.generative.forgetting`.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ftlib import arguments
from ftlib.heads import find_head
from ftlib.techniques.l2sp import backbone_state, weight_distance

__all__ = ["sanity_check_imagenet", "probe_photos", "reattach_head", "restore_buffers", "imagenet_predictions",
           "forgetting_report"]


def sanity_check_imagenet(model: nn.Module | None = None, *, k: int = 5, size: int = 224) -> dict[str, list]:
    """Top-``k`` ImageNet classes of the pretrained EfficientNet-Lite0 on the sample photos.

    Expect "palace" (or a similar building) first for ``china`` and "daisy" for ``flower``.
    """
    from ftlib.data.batches import prepare_images
    from ftlib.models import MODELS, load_model
    from ftlib.weights import imagenet_class_names, sample_photos, top_k_classes

    spec = MODELS["efficientnet-lite0"]
    model = model if model is not None else load_model("efficientnet-lite0", num_classes=None)
    names, photos = sample_photos()
    h, w = photos.shape[1:3]
    side = min(h, w)  # a centred square crop, as in ImageNet evaluation: no squashing
    top, left = (h - side) // 2, (w - side) // 2
    batch = prepare_images(photos[:, top:top + side, left:left + side], size, spec.mean, spec.std)
    return dict(zip(names, top_k_classes(model, batch, k, imagenet_class_names())))


def probe_photos(num_crops: int = 16, size: int = 224, seed: int = 0) -> torch.Tensor:
    """Prepared crops of the two sample photos: (2 + 2 * num_crops, 3, size, size).

    Each photo gives its centred square crop plus ``num_crops`` random square crops
    (a third to all of the shorter side), normalized for EfficientNet-Lite0.
    """
    from ftlib.data.batches import prepare_images
    from ftlib.models import MODELS
    from ftlib.weights import sample_photos

    arguments.integer(num_crops, "num_crops", minimum=0)
    spec = MODELS["efficientnet-lite0"]
    rng = np.random.default_rng(seed)
    _, photos = sample_photos()
    crops = []
    for photo in photos:  # (H, W, 3) uint8
        h, w = photo.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crops.append(prepare_images(photo[None, top:top + side, left:left + side], size, spec.mean, spec.std))
        for _ in range(num_crops):
            s = int(rng.integers(side // 3, side + 1))
            y0, x0 = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            crops.append(prepare_images(photo[None, y0:y0 + s, x0:x0 + s], size, spec.mean, spec.std))
    return torch.cat(crops)


def reattach_head(finetuned: nn.Module, pretrained: nn.Module) -> nn.Module:
    """A copy of ``finetuned`` with ``pretrained``'s original head in place of the new one.

    Neither model is modified.
    """
    name, head = find_head(pretrained)
    new_name, _ = find_head(finetuned)
    if name != new_name:
        raise ValueError(f"The models' heads differ in name ({name!r} vs {new_name!r}); are they the same "
                         "architecture?")
    model = copy.deepcopy(finetuned)
    setattr(model, name, copy.deepcopy(head))
    return model


@torch.no_grad()
def restore_buffers(model: nn.Module, pretrained: nn.Module) -> nn.Module:
    """A copy of ``model`` with ``pretrained``'s buffers (BatchNorm running statistics)."""
    model = copy.deepcopy(model)
    source = dict(pretrained.named_buffers())
    for name, buffer in model.named_buffers():
        if name in source and source[name].shape == buffer.shape:
            buffer.copy_(source[name])
    return model


def imagenet_predictions(model: nn.Module, images: torch.Tensor, k: int = 5) -> np.ndarray:
    """Top-``k`` class ids (N, k), in eval mode; the model's mode is restored."""
    from ftlib.weights import top_k_classes

    return np.array([[label for label, _ in row] for row in top_k_classes(model, images, k)])


def forgetting_report(finetuned: nn.Module, pretrained: nn.Module, images: torch.Tensor) -> dict:
    """What the fine-tuned backbone still knows of the pretraining task.

    Parameters
    ----------
    finetuned : nn.Module
        The fine-tuned model (with its new head).
    pretrained : nn.Module
        The original model with its original head (``load_model(name, num_classes=None)``).
    images : Tensor
        Prepared images (N, 3, H, W), e.g. :func:`probe_photos`.

    Returns
    -------
    dict with ``top1_agreement`` (share of images with the same top-1 class),
    ``top5_overlap`` (mean share of the original top-5 still in the top-5),
    ``top1_agreement_pretrained_stats`` (the same with the pretrained BatchNorm
    statistics put back: what the weights alone forgot), ``weight_drift`` (relative,
    backbone only) and ``drift_per_block``.
    """
    device = next(pretrained.parameters()).device
    images = images.to(device)
    original = imagenet_predictions(pretrained, images)  # (N, 5)
    reattached = reattach_head(finetuned, pretrained).to(device)
    after = imagenet_predictions(reattached, images)
    after_stats = imagenet_predictions(restore_buffers(reattached, pretrained), images)
    overlap = [len(set(a) & set(b)) / len(a) for a, b in zip(original, after)]
    drift = weight_distance(finetuned, backbone_state(pretrained))
    return {
        "top1_agreement": float((original[:, 0] == after[:, 0]).mean()),
        "top5_overlap": float(np.mean(overlap)),
        "top1_agreement_pretrained_stats": float((original[:, 0] == after_stats[:, 0]).mean()),
        "weight_drift": drift["relative"],
        "drift_per_block": drift["per_block"],
        "num_images": int(len(images)),
    }
