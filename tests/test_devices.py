"""Device handling that only shows on a GPU, checked on the CPU.

The meta device stands in for a second device: tensors there have shapes and a device
but no data, so a test can see where a tensor went without a GPU.
"""
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ftlib import features, optim, train
from ftlib.models import TinyCNN
from ftlib.regularization import l2sp
from tiny_data import make_image_loader


def test_l2sp_moves_the_pretrained_copy_to_the_training_device_once():
    model = TinyCNN(num_classes=3)
    penalty = l2sp(model, alpha=0.01)  # snapshot on the CPU, where models are loaded
    model.to("meta")  # what fit's model.to(device) does
    first = penalty(model)
    state = penalty.state_
    assert first.device.type == "meta" and all(v.device.type == "meta" for v in state.values())
    penalty(model)
    assert penalty.state_ is state  # not copied again at the next step


def test_probe_model_returns_logits_on_the_backbone_device(monkeypatch):
    backbone = TinyCNN(num_classes=3)
    clf = LogisticRegression().fit(np.random.default_rng(0).normal(size=(12, 4)), np.arange(12) % 3)
    probe = features.ProbeModel(backbone.to("meta"), clf, num_classes=3)
    monkeypatch.setattr(features, "_batch_features", lambda model, inputs, layers: torch.zeros(2, 4))
    out = probe(pixel_values=torch.zeros(2, 3, 8, 8, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3)


def test_lr_range_test_moves_batches_to_the_model_device(monkeypatch):
    moved = []
    real = train._to

    def spy(batch, device):
        moved.append(torch.device(device))
        return real(batch, device)

    monkeypatch.setattr(train, "_to", spy)
    model = TinyCNN(num_classes=3)
    optim.lr_range_test(model, make_image_loader(n=48), num_steps=5)
    assert moved and set(moved) == {next(model.parameters()).device}
