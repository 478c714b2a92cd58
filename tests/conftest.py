import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# `ftlib check` run by tests leaves no warm server behind (tests/grading/test_warm.py starts its own).
os.environ.setdefault("FTLIB_CHECK_WARM", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from tiny_data import make_image_loader  # noqa: E402


@pytest.fixture
def moved_to(monkeypatch):
    """The devices every ``ftlib.devices.to_device`` call moved a batch to, in order."""
    from ftlib import devices

    moved = []
    real = devices.to_device

    def spy(batch, device):
        moved.append(torch.device(device))
        return real(batch, device)

    monkeypatch.setattr(devices, "to_device", spy)
    return moved


@pytest.fixture
def image_loader():
    return make_image_loader()


@pytest.fixture
def tiny_cnn():
    from ftlib.models import load_model

    torch.manual_seed(0)
    return load_model("tiny-cnn", num_classes=3)


@pytest.fixture(scope="session")
def tokenizer():
    from ftlib.models import load_tokenizer

    return load_tokenizer("minilm-l6")
