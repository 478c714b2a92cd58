import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def make_image_loader(n=48, num_classes=3, size=16, batch_size=8, seed=0, shuffle=False):
    """A small learnable image task: the class sets the mean brightness of a channel."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[torch.arange(n), labels % 3] += 1.5
    batches = [{"pixel_values": x[i:i + batch_size], "labels": labels[i:i + batch_size]} for i in range(0, n, batch_size)]

    class Loader(list):
        pass

    loader = Loader(batches)
    return loader


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
