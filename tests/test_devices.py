"""Device handling that only shows on a GPU, checked on the CPU.

The meta device stands in for a second device: tensors there have shapes and a device
but no data, so a test can see where a tensor went without a GPU.
"""
import os

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ftlib import optim, train
from ftlib.devices import Runtime
from ftlib.models import TinyCNN
from ftlib.techniques import features
from ftlib.techniques.l2sp import l2sp
from tiny_data import make_image_loader


def test_l2sp_moves_the_pretrained_copy_to_the_training_device_once():
    model = TinyCNN(num_classes=3)
    callback = l2sp(model, alpha=0.01)  # snapshot on the CPU, where models are loaded
    model.to("meta")  # what fit's model.to(device) does
    first = callback.penalty(model)
    state = callback.state_
    assert first.device.type == "meta" and all(v.device.type == "meta" for v in state.values())
    callback.penalty(model)
    assert callback.state_ is state  # not copied again at the next step


def test_probe_model_returns_logits_on_the_backbone_device(monkeypatch):
    backbone = TinyCNN(num_classes=3)
    clf = LogisticRegression().fit(np.random.default_rng(0).normal(size=(12, 4)), np.arange(12) % 3)
    probe = features.ProbeModel(backbone.to("meta"), clf, num_classes=3)
    monkeypatch.setattr(features, "_batch_features", lambda model, inputs, layers: torch.zeros(2, 4))
    out = probe(pixel_values=torch.zeros(2, 3, 8, 8, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3)


def test_lr_range_test_moves_batches_to_the_model_device(moved_to):
    moved = moved_to
    model = TinyCNN(num_classes=3)
    optim.lr_range_test(model, make_image_loader(n=48), num_steps=5)
    assert moved and set(moved) == {next(model.parameters()).device}


def test_batches_go_to_a_cuda_device_through_pinned_memory(monkeypatch):
    # Only from pinned memory is a non_blocking copy asynchronous. The meta device
    # stands in for the GPU; pin_memory itself needs a CUDA runtime, so it is recorded.
    from ftlib import devices

    assert devices._pins(torch.device("cuda:0")) and not devices._pins(torch.device("cpu"))
    pinned, copies = [], []
    monkeypatch.setattr(devices, "_pins", lambda device: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        copies.append(kwargs.get("non_blocking"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    batch = {"pixel_values": torch.zeros(2, 3, 4, 4), "labels": torch.tensor([0, 1]), "ids": ["a", "b"]}
    moved = devices.to_device(batch, "meta")
    assert pinned == [(2, 3, 4, 4), (2,)] and copies == [True, True]
    assert moved["pixel_values"].device.type == "meta" and moved["ids"] == ["a", "b"]


_SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def _count_syncs(monkeypatch):
    """Calls that make the host wait for the device (a GPU), counted on the CPU."""
    calls = []
    for name in _SYNCS:
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, _name=name, **k: calls.append(_name) or _real(self, *a, **k))
    return calls


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.slow
def test_fit_synchronises_once_per_epoch_not_per_step(monkeypatch, precision):
    counts = []
    for n in (48, 144):  # 6 and 18 steps per epoch
        torch.manual_seed(0)
        model = TinyCNN(num_classes=3)
        calls = _count_syncs(monkeypatch)
        train.fit(model, make_image_loader(n=n), make_image_loader(n=24, seed=1), epochs=2, progress=False,
                  runtime=Runtime(precision=precision))
        counts.append(len(calls))
        monkeypatch.undo()
    assert counts[0] == counts[1], f"host-device synchronisations grow with the steps: {counts}"
    assert counts[0] <= 10 * 2  # a handful per epoch (sums, the best weights' copy)


def test_reproducible_pins_down_cuda_kernels_and_restores_the_settings(monkeypatch):
    from ftlib import devices

    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, warn_only=False: calls.append((mode, warn_only)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    with devices.reproducible("cpu"):
        assert not calls and "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # CPU kernels are deterministic
    with devices.reproducible(torch.device("cuda", 1)):
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert calls == [(True, True)]
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and len(calls) == 2


@pytest.fixture
def reproducible_for(monkeypatch):
    """The devices ``fit`` asked ``reproducible`` (deterministic kernels) for, in order."""
    import contextlib

    seen = []

    @contextlib.contextmanager
    def spy(device):
        seen.append(torch.device(device))
        yield

    monkeypatch.setattr(train, "reproducible", spy)
    return seen


@pytest.mark.slow
def test_fit_trains_inside_reproducible_for_its_device(reproducible_for):
    train.fit(TinyCNN(num_classes=3), make_image_loader(), epochs=1, progress=False, runtime=Runtime("cpu"))
    assert reproducible_for == [torch.device("cpu")]
    train.fit(TinyCNN(num_classes=3), make_image_loader(), epochs=1, progress=False, seed=None)
    assert len(reproducible_for) == 1  # no seed, no reproducibility asked for: the fastest kernels
    train.fit(TinyCNN(num_classes=3), make_image_loader(), epochs=1, progress=False,
              runtime=Runtime(deterministic=False))
    assert len(reproducible_for) == 1  # seeded, but the faster GPU kernels asked for


def test_no_deterministic_reaches_fit_from_the_command_line(reproducible_for, tmp_path):
    import json

    from ftlib.cli import main

    common = ["finetune", "--model", "tiny-bert", "--train-size", "32", "--val-size", "16", "--test-size", "16",
              "--epochs", "1", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert len(reproducible_for) == 1
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["deterministic"] is True
    assert main([*common, "--no-deterministic", "--out", str(tmp_path / "b")]) == 0
    assert len(reproducible_for) == 1
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["deterministic"] is False


def test_a_run_records_the_gpu_it_trained_on_and_its_peak_memory(monkeypatch):
    from ftlib import devices
    from ftlib.reporting import device_report

    assert device_report() == {"device": "cpu"} or torch.cuda.is_available()
    monkeypatch.setattr(devices, "default_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    assert device_report() == {"device": "NVIDIA H200", "gpu_peak_memory_mb": 3.0}
