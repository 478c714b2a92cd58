"""Step 2, the splits: deduplicated, stratified, grouped and seeded.

Splitting follows three rules that tutorials often break:

* duplicates are removed first, so no text or image sits in two splits;
* splits are stratified (each keeps the class proportions) and seeded (reproducible);
* related examples stay together: Rotten Tomatoes has several snippets per movie, and
  a movie's name and style leak from train to test unless splits are grouped by movie.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ftlib.data.registry import TaskData

__all__ = ["Splits", "deduplicate", "drop_overlap", "stratified_split", "balanced_subset", "stratified_subset", "split_dataset"]


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


def drop_overlap(data: TaskData, *others: TaskData) -> TaskData:
    """``data`` without the examples that also appear in ``others``, by :func:`deduplicate`'s rule.

    For a training set next to validation or test sets the user gave: an example in both
    would be tested on after being trained on.
    """
    held_out = {_fingerprint(x) for other in others for x in other.inputs}
    return data.subset(np.array([i for i, x in enumerate(data.inputs) if _fingerprint(x) not in held_out], dtype=int))


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
