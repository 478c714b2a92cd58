"""Step 2, the loaders: a DataLoader of a data set prepared the way a given model expects.

Built above both the models (``ftlib.models``: tokenizer, image size, normalization)
and the data (``ftlib.datasets``, ``ftlib.batches``), so neither imports the other.
"""
from __future__ import annotations

from functools import partial

import torch

from ftlib import arguments
from ftlib.batches import LengthGroupedBatchSampler, collate_images, collate_text, text_lengths
from ftlib.datasets import TaskData
from ftlib.models import get_model_spec, load_tokenizer

__all__ = ["make_loader"]


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, data: TaskData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.inputs[i], int(self.data.labels[i])


def make_loader(
    data: TaskData,
    model_name: str,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    tokenizer=None,
    max_length: int = 64,
    image_size: int | None = None,
    group_by_length: bool | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader of dict batches for ``data``, prepared the way ``model_name`` expects.

    ``group_by_length`` (text only) batches texts of similar length together (see
    :class:`LengthGroupedBatchSampler`). By default it is on for shuffled (training)
    loaders and off otherwise, so an evaluation loader keeps the data's order and
    predictions line up with ``data.inputs``; turn it on for evaluation when only the
    metrics matter (it halves the time on short texts).
    """
    spec = get_model_spec(model_name, allow_download=True)
    if spec.task != data.task:
        raise ValueError(f"Model {model_name!r} is a {spec.task} model but dataset {data.name!r} is a {data.task} task.")
    arguments.integer(batch_size, "batch_size")
    if group_by_length is None:
        group_by_length = shuffle and data.task == "text"
    if group_by_length and data.task != "text":
        raise ValueError("group_by_length applies to text only: images in a batch all have the same size.")
    generator = torch.Generator().manual_seed(seed)
    if data.task == "text":
        tokenizer = tokenizer or load_tokenizer(model_name, allow_download=True)
        collate = partial(collate_text, tokenizer=tokenizer, max_length=max_length)
        if group_by_length:
            sampler = LengthGroupedBatchSampler(text_lengths(data.inputs, tokenizer, max_length), batch_size,
                                                shuffle=shuffle, generator=generator)
            loader = torch.utils.data.DataLoader(_Pairs(data), batch_sampler=sampler, collate_fn=collate)
            loader.generator = generator  # so fit(seed=...) can reseed it, as for plain loaders
            return loader
    else:
        size = image_size or spec.image_size or 96
        if size % 32 and model_name == "efficientnet-lite0":
            raise ValueError(f"image_size must be a multiple of 32 for {model_name} (its padding assumes it); got {size}.")
        collate = partial(collate_images, size=size, mean=spec.mean or (0.5,) * 3, std=spec.std or (0.5,) * 3)
    return torch.utils.data.DataLoader(_Pairs(data), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
