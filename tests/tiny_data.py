"""Tiny, learnable data for the unit tests (importable as `tiny_data`: tests/ is on sys.path).

A plain module rather than conftest.py: tests/learner has a conftest of its own, and
`from conftest import ...` would pick whichever conftest was imported first.
"""
import torch


def make_image_loader(n=48, num_classes=3, size=16, batch_size=8, seed=0, shuffle=False, signal=1.5):
    """A small learnable image task: the class sets the mean brightness of a channel
    (by ``signal``; the noise has standard deviation 0.5)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[torch.arange(n), labels % 3] += signal
    batches = [{"pixel_values": x[i:i + batch_size], "labels": labels[i:i + batch_size]} for i in range(0, n, batch_size)]

    class Loader(list):
        pass

    loader = Loader(batches)
    return loader


def make_image_dataset(n=48, num_classes=3, size=16, seed=0, signal=1.5):
    """The same task as :func:`make_image_loader` as a Dataset of dict examples, for a real
    DataLoader (which ``accelerate`` can shard) to batch."""
    batches = make_image_loader(n=n, num_classes=num_classes, size=size, batch_size=n, seed=seed, signal=signal)

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return {k: v[i] for k, v in batches[0].items()}

    return Examples()
